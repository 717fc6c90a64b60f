"""What a run does to its machine and its folders: data safety of synth:, --threads, file modes, progress lines."""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_model

import vitreduce
from vitreduce import device
from vitreduce.cli.main import main
from vitreduce.console import Countdown, Progress
from vitreduce.data.synth import write_synth_dataset
from vitreduce.errors import VitreduceError

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "v0_1"


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def machine(monkeypatch):
    """``machine(cores, load)``: what this process sees as its available cores and 1-minute load average."""

    def set_up(cores: int, load: float) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
        monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)

    return set_up


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---- data safety ---------------------------------------------------------------------------------------


def test_a_missing_root_is_never_filled_with_synthetic_data(tmp_path, capsys):
    config = REPO / "configs" / "demo" / "baseline.yaml"  # has a synth: section
    assert yaml.safe_load(config.read_text())["synth"] is not None
    out = tmp_path / "run"
    assert main(["train", str(config), "--set", "data.root=/nonexistent/x", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "data.root /nonexistent/x does not exist" in err and "starts with 'synth'" in err
    assert not Path("/nonexistent/x").exists() and not out.exists()  # nothing written, not even train.log


def test_a_study_refuses_a_missing_root_not_named_synth(tmp_path):
    from vitreduce.study.runner import run_study
    from vitreduce.study.spec import load_spec

    spec = load_spec(REPO / "studies" / "tiny" / "demo.yaml", [f"overrides.data.root={tmp_path / 'imagenet'}"])
    with pytest.raises(VitreduceError, match=r"imagenet is not a folder \(synth: generates .* synth\*\)"):
        run_study(spec, tmp_path / "study")
    assert not (tmp_path / "study").exists()
    with pytest.raises(VitreduceError, match=r"imagenet does not exist. The synth: section generates .* 'synth'"):
        run_study(spec, tmp_path / "study", dry_run=True)  # a dry run only notes a missing dataset, not this
    assert not (tmp_path / "imagenet").exists()


# ---- threads -------------------------------------------------------------------------------------------


def test_threads_option_sets_torchs_threads(tmp_path, machine):
    machine(cores=8, load=0.0)
    out = tmp_path / "m.safetensors"
    assert main(["reduce", "vit_tiny_patch16_224", "--reduction", "grouped", "--model-arg", "depth=2",
                 "--model-arg", "embed_dim=16", "--model-arg", "num_heads=2", "--out", str(out), "--threads", "3"]) == 0
    assert torch.get_num_threads() == 3
    assert main(["reduce", "x", "--reduction", "grouped", "--out", str(out), "--threads", "0"]) == 2


def test_default_threads_respect_omp_num_threads_the_affinity_and_the_load(machine, monkeypatch):
    machine(cores=4, load=1.2)
    assert device.default_threads() == 3  # 4 available cores, about 1 busy
    assert device.default_threads(share=2) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert device.set_threads(None) == 2 and torch.get_num_threads() == 2


def test_a_busy_machine_gets_a_one_line_warning(tmp_path, machine, capsys):
    machine(cores=2, load=3.0)
    warnings: list[str] = []
    assert device.set_threads(2, warn=warnings.append) == 2
    assert len(warnings) == 1 and "2 thread(s) on 2 available core(s) with a load average of about 3" in warnings[0]
    machine(cores=2, load=0.1)
    assert device.set_threads(None, warn=warnings.append) == 2 and len(warnings) == 1  # quiet machine: no warning
    machine(cores=2, load=3.0)
    out = tmp_path / "m.safetensors"
    assert main(["reduce", "vit_tiny_patch16_224", "--reduction", "grouped", "--model-arg", "depth=2",
                 "--model-arg", "embed_dim=16", "--model-arg", "num_heads=2", "--out", str(out), "--threads", "1"]) == 0
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")] != []


def test_a_study_divides_the_threads_between_its_runs(tmp_path, machine, monkeypatch):
    from vitreduce.study.runner import run_study
    from vitreduce.study.spec import load_spec

    machine(cores=8, load=0.0)
    spec = load_spec(REPO / "studies" / "tiny" / "demo.yaml", [f"overrides.data.root={tmp_path / 'synth'}"])
    lines: list[str] = []
    run_study(spec, tmp_path / "a", jobs=2, echo=lines.append, dry_run=True)
    assert "2 at a time, 4 thread(s) each" in lines[0]
    lines.clear()
    run_study(spec, tmp_path / "b", jobs=2, echo=lines.append, dry_run=True, threads=3)
    assert "2 at a time, 3 thread(s) each" in lines[0]


# ---- permissions ---------------------------------------------------------------------------------------


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_files_and_folders_follow_the_umask(tmp_path, tiny_train_config, umask_022):
    data = write_synth_dataset(tmp_path / "synth", classes=2, train_per_class=2, val_per_class=1, size=8)
    assert mode(data) == mode(data / "train") == 0o755 and mode(data / "vitreduce_synth.json") == 0o644
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_train_config(epochs=1)))
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run), "--threads", "1"]) == 0
    for name in ("config.yaml", "run.json", "metrics.jsonl", "predictions.csv", "done.json", "model.safetensors",
                 "model_ema.safetensors", "train.log"):
        assert mode(run / name) == 0o644, name
    checkpoints = run / "checkpoints"
    assert mode(run) == mode(checkpoints) == mode((checkpoints / "last").resolve()) == 0o755
    assert {mode(p) for p in (checkpoints / "last").resolve().iterdir()} == {0o644}
    vitreduce.save(vitreduce.load(run / "model.safetensors"), tmp_path / "copy.safetensors")
    assert mode(tmp_path / "copy.safetensors") == 0o644


def test_a_report_follows_the_umask(tmp_path, umask_022):
    from vitreduce.study.reporting import write_report

    study = tmp_path / "study"
    shutil.copytree(FIXTURES / "study" / "out", study, symlinks=True)
    paths = write_report(study, n_resamples=100)
    for path in (paths.markdown, paths.html, paths.summary_json, *(study / "figures").iterdir()):
        assert mode(path) == 0o644, path
    assert mode(study / "figures") == 0o755


# ---- progress ------------------------------------------------------------------------------------------


def test_training_lines_give_the_runs_eta_over_every_epoch(capsys):
    progress = Progress("lines", epochs=3, every_steps=2)
    progress.start_epoch(2, batches=4, start_batch=0)
    for _ in range(4):
        progress.update(1, 8, loss=1.0, lr=1e-3)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(" eta " in line and " run eta " in line for line in lines)
    assert lines[-1].startswith("epoch 2/3 batch 4/4 ")
    # 4 batches of epoch 3 left, at this session's pace of 4 batches so far: the run's ETA is the time so far.
    assert progress.run_eta(progress.session_start + 10.0) == pytest.approx(10.0)


def test_countdown_says_done_left_mean_and_eta():
    countdown = Countdown(5, "run", parallel=2)
    assert countdown.tick() == "1/5 runs done, 4 left"  # skipped: no time yet
    assert countdown.tick(60.0) == "2/5 runs done, 3 left, 01:00 per run on average, ETA 02:00"
    assert countdown.tick(120.0).endswith("01:30 per run on average, ETA 01:30")
    countdown.tick(1.0)
    assert countdown.tick(1.0) == "5/5 runs done, 0 left, 00:46 per run on average"


def test_train_writes_train_log_with_the_lines_it_prints(tmp_path, tiny_train_config, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_train_config(epochs=1)))
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--threads", "1"]) == 0
    printed = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning:")]
    logged = (tmp_path / "run" / "train.log").read_text().splitlines()
    assert logged == printed and any(line.startswith("done: ") for line in logged)
    assert any(" run eta " in line for line in logged)


def test_profile_prints_each_repeat_with_its_time():
    from vitreduce.efficiency.profiler import profile_variants

    lines: list[str] = []
    profile_variants("vit_tiny_patch16_224", ["none", "grouped"], mode="infer", batch_size=2, repeats=2, warmup=0,
                     memory=False, num_classes=4, model_kwargs=dict(img_size=16, patch_size=8, embed_dim=16, depth=2,
                                                                    num_heads=2), progress=lines.append)
    repeats = [line for line in lines if line.startswith("timing: repeat")]
    assert [line.split(" done in ")[0] for line in repeats] == ["timing: repeat 1/2", "timing: repeat 2/2"]
    assert all(" ms (none infer " in line and ", grouped infer " in line for line in repeats)


def test_sharpness_quiet_prints_the_result_only(tmp_path, tiny_dataset, capsys):
    path = tmp_path / "m.safetensors"
    vitreduce.save(tiny_model(num_classes=4), path)
    assert main(["sharpness", str(path), "--data", str(tiny_dataset), "--split", "train", "--batches", "1",
                 "--batch-size", "4", "--top-k", "1", "--iters", "2", "--trace-samples", "0", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith("loss ") and "preprocessing" not in captured.out
