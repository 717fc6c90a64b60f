"""Training from tar shards: the run from the folder they were made from, and bitwise resume after SIGKILL.

The shards keep the folder's order, so a run reading them (with loader workers) must end with the same
weights, EMA, metrics, step log and predictions as the run reading the folder (without workers); a run
from shards SIGKILLed mid-epoch at several steps and rerun must end byte for byte as the uninterrupted one.
"""
from __future__ import annotations

import filecmp
import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vitreduce.data import write_shards

TIMING = ("img_s", "epoch_time_s")  # wall-clock fields: the only ones allowed to differ
MODELS = ("model.safetensors", "model_ema.safetensors")


def _train(python, config: Path, out: Path) -> subprocess.CompletedProcess:
    return python("-m", "vitreduce", "train", config, "--out", out, capture_output=True, text=True, timeout=600)


def _config(tmp: Path, tree: dict) -> Path:
    (tmp / "config.yaml").write_text(yaml.safe_dump(tree))
    return tmp / "config.yaml"


def _metrics(out: Path) -> list[dict]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def _same_results(a: Path, b: Path) -> None:
    for name in MODELS:
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name
    assert _metrics(a) == _metrics(b)
    for name in ("predictions.csv", "steps.jsonl"):
        assert (a / name).read_text() == (b / name).read_text(), name


@pytest.fixture(scope="module")
def shard_runs(tiny_dataset, tiny_train_config, python_one_thread, tmp_path_factory) -> dict:
    """The shard set of ``tiny_dataset`` and two uninterrupted runs: from the folder (no workers) and from
    the shards (2 workers)."""
    tmp = tmp_path_factory.mktemp("shard-runs")
    shards = write_shards(tiny_dataset, tmp / "set", shard_size=10, progress=lambda line: None)
    runs = {}
    for name, data in (("folder", {"workers": 0}), ("shards", {"root": str(shards), "workers": 2})):
        (tmp / name).mkdir()
        config = _config(tmp / name, tiny_train_config(data=data))
        proc = _train(python_one_thread, config, tmp / name / "run")
        assert proc.returncode == 0, proc.stderr
        runs[name] = tmp / name / "run"
    return {"set": shards, "source": tiny_dataset, **runs}


@pytest.mark.slow
def test_a_run_from_shards_equals_the_run_from_their_folder(shard_runs):
    _same_results(shard_runs["folder"], shard_runs["shards"])


@pytest.mark.slow
@pytest.mark.parametrize(("kill", "resumes_at"), [
    ("step:3", "recovery-00000002"),  # mid-epoch 1
    ("step:6", "recovery-00000006"),  # mid-epoch 2, right after a recovery state was written
    ("step:11", "recovery-00000010"),  # mid-epoch 3
])
def test_sigkill_mid_epoch_then_rerun_is_bitwise_identical(shard_runs, tiny_train_config, python_one_thread, killer,
                                                          tmp_path, kill, resumes_at):
    config = _config(tmp_path, tiny_train_config(data={"root": str(shard_runs["set"]), "workers": 2}))
    out = tmp_path / "run"
    killed = python_one_thread(killer, kill, config, out, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr
    resumed = _train(python_one_thread, config, out)
    assert resumed.returncode == 0, resumed.stderr
    assert f"from {out / 'checkpoints' / resumes_at}" in resumed.stderr
    _same_results(shard_runs["shards"], out)
    for name in MODELS:
        assert filecmp.cmp(shard_runs["shards"] / name, out / name, shallow=False), name


@pytest.mark.slow
def test_two_ranks_on_shards_match_one_process_on_the_folder(shard_runs, tiny_train_config, python_one_thread,
                                                             tmp_path):
    """The ranks split each epoch of the shards between them: 2 ranks x 2 images x 2 micro-batches train on
    the 8 images a single process on the folder takes per step (no augmentation; SGD, which shows a wrong
    average or a sample seen twice, where Adam would hide it)."""
    def tree(root, batch_size: int, accum_steps: int) -> dict:
        return tiny_train_config(
            seed=5, epochs=2, model={"drop_path_rate": 0.0},
            data={"root": str(root), "batch_size": batch_size, "workers": 0}, augment={"enabled": False},
            optimizer={"name": "momentum", "lr": 0.05, "betas": None, "eps": None, "accum_steps": accum_steps},
            checkpoint={"recovery_every_steps": 0}, logging={"every_steps": 50})

    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    folder = _config(tmp_path / "one", tree(shard_runs["source"], 8, 1))
    assert _train(python_one_thread, folder, tmp_path / "single").returncode == 0
    config = _config(tmp_path / "two", tree(shard_runs["set"], 2, 2))
    proc = python_one_thread("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "vitreduce", "train", config, "--out", tmp_path / "ddp",
                             capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in MODELS:
        a, b = load_file(str(tmp_path / "single" / name)), load_file(str(tmp_path / "ddp" / name))
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=f"{name}: {key}")
    assert (tmp_path / "ddp" / "predictions.csv").read_text().count("\n") == 17  # eval: each image once
