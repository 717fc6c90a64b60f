"""Exact resume: a run SIGKILLed mid-epoch or mid-save and rerun ends bitwise identical to an uninterrupted one."""
from __future__ import annotations

import filecmp
import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from vitreduce.cli.main import main

TIMING = ("img_s", "epoch_time_s")  # wall-clock fields: the only ones allowed to differ


def write_config(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


def run_cli(python, config: Path, out: Path) -> subprocess.CompletedProcess:
    """``vitreduce train CONFIG --out OUT`` in a subprocess started by ``python`` (the ``python_one_thread``
    fixture: the same thread count in every run)."""
    return python("-m", "vitreduce", "train", config, "--out", out, capture_output=True, text=True, timeout=600)


def metrics(out: Path) -> list[dict]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def assert_same_run(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "model_ema.safetensors"):
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        assert ta.keys() == tb.keys()
        for key in ta:
            assert torch.equal(ta[key], tb[key]), f"{name}: {key}"
        assert filecmp.cmp(a / name, b / name, shallow=False), f"{name}: same tensors, different bytes"
    assert metrics(a) == metrics(b)
    assert [r["epoch"] for r in metrics(b)] == [1, 2, 3]  # no epoch logged twice
    assert (a / "predictions.csv").read_text() == (b / "predictions.csv").read_text()
    # steps.jsonl (every step: conftest's logging.step_every 1) cut back to the checkpoint and written again
    assert (a / "steps.jsonl").read_text() == (b / "steps.jsonl").read_text()
    assert [json.loads(line)["step"] for line in (b / "steps.jsonl").read_text().splitlines()] == list(range(1, 13))


@pytest.fixture(scope="module")
def reference(tiny_train_config, python_one_thread, tmp_path_factory) -> tuple[Path, Path]:
    """The uninterrupted run (no data-loader workers)."""
    tmp = tmp_path_factory.mktemp("reference")
    config = write_config(tmp / "config.yaml", tiny_train_config(data={"workers": 0}))
    proc = run_cli(python_one_thread, config, tmp / "run")
    assert proc.returncode == 0, proc.stderr
    return config, tmp / "run"


@pytest.mark.slow
@pytest.mark.parametrize(("kill", "workers", "resumes_at"), [
    ("step:7", 0, "recovery-00000006"),  # mid-epoch 2: resumes from the recovery state after step 6
    ("save:3", 2, "last-00000004"),  # while writing that recovery state: resumes from epoch 1's end
])
def test_sigkill_then_rerun_is_bitwise_identical(reference, tiny_train_config, python_one_thread, killer, tmp_path,
                                                 kill, workers, resumes_at):
    config = write_config(tmp_path / "config.yaml", tiny_train_config(data={"workers": workers}))
    out = tmp_path / "run"
    # tests/killer.py: the same run, SIGKILLed at that event
    killed = python_one_thread(killer, kill, config, out, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr
    assert not (out / "done.json").exists()
    if kill.startswith("save"):
        assert any(p.name.endswith(".tmp") for p in (out / "checkpoints").iterdir())  # the half-written one
    resumed = run_cli(python_one_thread, config, out)
    assert resumed.returncode == 0, resumed.stderr
    assert f"from {out / 'checkpoints' / resumes_at}" in resumed.stderr
    assert_same_run(reference[1], out)
    assert not any(p.name.startswith(".") for p in (out / "checkpoints").iterdir())  # leftovers pruned


def test_checkpoints_hold_no_pickles_and_best_is_a_model_file(reference):
    _, out = reference
    ckpt = out / "checkpoints"
    assert {p.name for p in ckpt.iterdir() if p.is_symlink()} == {"last", "best", "recovery"}
    files = [p for p in ckpt.rglob("*") if p.is_file()]
    assert files and all(p.suffix == ".safetensors" for p in files)  # tensors + JSON header, nothing pickled
    with safe_open(str(ckpt / "last" / "state.safetensors"), framework="pt") as handle:
        header = json.loads(handle.metadata()["state"])
        names = set(handle.keys())  # noqa: SIM118 (safe_open has no __iter__)
    assert header["position"]["epochs_done"] == 3 and header["position"]["step"] == 12
    # Optimizer state is keyed by unique parameter names: the shared MLP (blocks 0 and 1) once.
    assert "optim/blocks.0.mlp.fc1.weight/exp_avg" in names
    assert not any(n.startswith("optim/blocks.1.mlp.") for n in names)
    best_epoch = max(metrics(out), key=lambda r: r["ema"]["top1"])["epoch"]  # first peak wins ties
    model = __import__("vitreduce").load(ckpt / "best" / "model_ema.safetensors")
    assert model.blocks[0].mlp is model.blocks[1].mlp
    with safe_open(str(ckpt / "best" / "model.safetensors"), framework="pt") as handle:
        assert handle.metadata()["epoch"] == str(best_epoch)


def test_rerun_of_a_finished_run_does_nothing(reference, capsys):
    config, out = reference
    before = (out / "metrics.jsonl").read_text()
    assert main(["train", str(config), "--out", str(out)]) == 0
    assert "already finished" in capsys.readouterr().out
    assert (out / "metrics.jsonl").read_text() == before


def test_rerun_with_a_different_config_is_refused_naming_the_keys(reference, capsys):
    config, out = reference
    assert main(["train", str(config), "--out", str(out), "--set", "optimizer.lr=0.002", "--set", "seed=4"]) == 2
    err = capsys.readouterr().err
    assert "optimizer.lr: 0.001 -> 0.002" in err and "seed: 3 -> 4" in err


def test_resume_needs_a_run(tmp_path, capsys):
    assert main(["train", "--resume", "--out", str(tmp_path / "nothing")]) == 2
    assert "nothing to resume" in capsys.readouterr().err
