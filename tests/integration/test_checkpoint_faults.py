"""Checkpoint faults: a kill at every point of the epoch-end save loses neither ``last`` nor ``best``; a damaged
newest checkpoint is set aside and the older one resumed; one process trains a run directory at a time;
a refusal before the first checkpoint does not block the corrected rerun; an unwritable run directory
stops the run with a clear error and its checkpoints intact."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import vitreduce
from vitreduce.cli.main import main
from vitreduce.locks import RunLock
from vitreduce.train.config import load_config
from vitreduce.train.loop import _step_groups, train
from vitreduce.train.model import build_model

MODELS = ("model.safetensors", "model_ema.safetensors")


def fault_config(tiny_train_config, path: Path, **overrides) -> Path:
    """The tiny config with a learning rate and EMA decay under which the peak moves (epochs 1 and 2 are each
    the best so far, epoch 3 is not): `best` is swapped at an epoch's end."""
    tree = tiny_train_config(optimizer={"lr": 0.01}, ema={"decay": 0.5}, **overrides)
    path.write_text(yaml.safe_dump(tree))
    return path


def train_cli(config: Path, out: Path, *extra: str) -> int:
    return main(["train", str(config), "--out", str(out), *extra])


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), f"{a.name}: {key}"


def assert_same_run(reference: Path, out: Path) -> None:
    for name in MODELS:
        assert_same_tensors(reference / name, out / name)
        assert_same_tensors(reference / "checkpoints" / "best" / name, out / "checkpoints" / "best" / name)
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    assert (reference / "predictions.csv").read_text() == (out / "predictions.csv").read_text()


class _Stop(BaseException):
    """Ends a run in this process at a chosen event, leaving the files as a kill there would."""


def stop_at(target: str, count: int):
    seen = 0

    def on_event(event: str) -> None:
        nonlocal seen
        seen += event == target
        if event == target and seen == count:
            raise _Stop

    return on_event


@pytest.fixture(scope="module")
def reference(tiny_train_config, tmp_path_factory) -> tuple[Path, Path]:
    """(config, run) of the uninterrupted run; its peak moves at epochs 1 and 2."""
    tmp = tmp_path_factory.mktemp("reference")
    config = fault_config(tiny_train_config, tmp / "config.yaml")
    assert train_cli(config, tmp / "run") == 0
    top1 = [json.loads(line)["ema"]["top1"] for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    assert top1[1] > top1[0] >= top1[2]  # the premise of the kill points below
    with safe_open(str(tmp / "run" / "checkpoints" / "best" / "model.safetensors"), framework="pt") as handle:
        assert handle.metadata()["epoch"] == "2"
    return config, tmp / "run"


# ---- a kill at every point of the epoch-end save -------------------------------------------------
# Saves: 1 recovery (step 2), 2 epoch 1 [last, best], 3 recovery (step 6), 4 epoch 2 [last, best],
# 5 recovery (step 10), 6 epoch 3 [last]. Each save: "save" (written), renamed, link:best, link:last, pruned.

KILL_POINTS = [
    "save:4",  # epoch 2's files written, not renamed
    "save:renamed:4",  # renamed, no symlink yet
    "save:link:best:1",  # epoch 1: `best` made, `last` not yet (the only checkpoint is the recovery one)
    "save:link:best:2",  # epoch 2: `best` moved to the new peak, `last` still at epoch 1
    "save:link:last:2",  # both swapped, the superseded checkpoint not pruned
    "save:pruned:4",
    "save:link:last:3",  # the last epoch's save, not pruned: the rerun only finishes
]


@pytest.mark.slow
@pytest.mark.parametrize("kill", KILL_POINTS)
def test_a_kill_at_any_point_of_the_save_keeps_last_and_best(reference, python_one_thread, killer, tmp_path, kill):
    config, out = reference[0], tmp_path / "run"
    killed = python_one_thread(killer, kill, config, out, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr
    assert train_cli(config, out) == 0
    assert_same_run(reference[1], out)
    ckpt = out / "checkpoints"
    links = {os.readlink(ckpt / kind) for kind in ("last", "best", "recovery")}
    assert {p.name for p in ckpt.iterdir() if not p.is_symlink()} == links  # everything else pruned


# ---- a damaged newest checkpoint -----------------------------------------------------------------


@pytest.fixture(scope="module")
def stopped_at_step_7(reference, tmp_path_factory) -> Path:
    """A run stopped after step 7: last -> last-00000004 (epoch 1), recovery -> recovery-00000006 (newest)."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.raises(_Stop):
        train(load_config(reference[0]), out, on_event=stop_at("step", 7))
    assert os.readlink(out / "checkpoints" / "recovery") == "recovery-00000006"
    return out


def _truncate(folder: Path) -> None:
    state = folder / "state.safetensors"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])


def _empty_model(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"")


def _edit_shape(folder: Path) -> None:
    """A header edited by hand: one optimizer tensor given another shape."""
    path = folder / "state.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.endswith("/exp_avg") and tensors[k].ndim == 2)
    tensors[key] = tensors[key].flatten()[:-1].reshape(1, -1).contiguous()
    save_file(tensors, str(path), metadata=metadata)


def _edit_header_json(folder: Path) -> None:
    path = folder / "state.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    save_file(load_file(str(path)), str(path), metadata={**metadata, "state": metadata["state"][:-7]})


@pytest.mark.parametrize("damage", [_truncate, _empty_model, _edit_shape, _edit_header_json])
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_older_one_resumed(reference, stopped_at_step_7, tmp_path,
                                                                             capsys, damage):
    out = tmp_path / "run"
    shutil.copytree(stopped_at_step_7, out, symlinks=True)
    damage(out / "checkpoints" / "recovery-00000006")
    capsys.readouterr()
    assert train_cli(reference[0], out) == 0
    err = capsys.readouterr().err
    assert "warning: checkpoint" in err and "recovery-00000006 is damaged" in err
    assert f"from {out / 'checkpoints' / 'last-00000004'}" in err
    assert (out / "checkpoints" / "damaged-recovery-00000006-1" / "state.safetensors").is_file()  # kept
    assert_same_run(reference[1], out)


def test_with_no_whole_checkpoint_the_run_stops_and_moves_nothing(reference, stopped_at_step_7, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(stopped_at_step_7, out, symlinks=True)
    _truncate(out / "checkpoints" / "recovery-00000006")
    _empty_model(out / "checkpoints" / "last-00000004")
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert train_cli(reference[0], out) == 2
    err = capsys.readouterr().err
    assert "holds no whole checkpoint" in err and "Traceback" not in err
    assert "last -> last-00000004" in err and "recovery -> recovery-00000006" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


# ---- the run lock ------------------------------------------------------------------------------

HOLD = "import sys; from vitreduce.locks import RunLock; assert RunLock(sys.argv[1]).acquire(); print('held', flush=True); sys.stdin.read()"  # noqa: E501


def test_a_second_process_on_the_same_out_is_refused_naming_the_holder(reference, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert train_cli(reference[0], out) == 2
        err = capsys.readouterr().err
        assert f"is being trained by another process (pid {holder.pid} on host" in err and " since " in err
        assert "choose another --out" in err and not (out / "config.yaml").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    lock = RunLock(out)  # released when the holder exits
    assert lock.acquire()
    lock.release()


def test_a_study_holding_the_lock_trains_in_process_and_hands_it_to_a_child(reference, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    lock = RunLock(out)
    assert lock.acquire()
    try:
        check = "import sys; from vitreduce.locks import RunLock; sys.exit(0 if RunLock(sys.argv[1]).acquire() else 3)"
        child = subprocess.run([sys.executable, "-c", check, str(out)], env={**os.environ, **lock.child_env()})
        assert child.returncode == 0  # a torchrun child given the token trains under the study's lock
        stranger = subprocess.run([sys.executable, "-c", check, str(out)],
                                  env={k: v for k, v in os.environ.items() if not k.startswith("VITREDUCE")})
        assert stranger.returncode == 3
        with pytest.raises(_Stop):  # the holder itself may train the run (a study's python launcher)
            train(load_config(reference[0]), out, on_event=stop_at("step", 1))
        assert lock.held and (out / "config.yaml").is_file()
    finally:
        lock.release()


# ---- traps ---------------------------------------------------------------------------------------


def test_a_run_refused_before_its_first_checkpoint_does_not_block_the_corrected_rerun(reference, tmp_path, capsys):
    config = load_config(reference[0])
    model = build_model(config.model)
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    nan = vitreduce.save(model, tmp_path / "nan.safetensors")
    out = tmp_path / "run"
    assert train_cli(reference[0], out, "--set", f"model.init_checkpoint={nan}") == 2
    err = capsys.readouterr().err
    assert "epoch 1, step 1" in err and "no checkpoint yet" in err and (out / "config.yaml").is_file()
    assert train_cli(reference[0], out) == 0  # the corrected command, same --out
    assert "starting afresh with this config" in capsys.readouterr().err
    assert load_config(out / "config.yaml") == config
    assert_same_run(reference[1], out)


def test_the_nonfinite_halt_names_the_newest_checkpoint(reference, tmp_path, monkeypatch):
    """A non-finite loss at step 8: the message names recovery-00000006 (where a rerun resumes), not `last`."""
    import vitreduce.train.loop as loop
    from vitreduce.train.step import NonFiniteError

    calls, real_step = [], loop.train_step

    def step_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 8:
            raise NonFiniteError("non-finite loss (loss nan, gradient norm nan)")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", step_then_fail)
    with pytest.raises(vitreduce.VitreduceError) as halt:
        train(load_config(reference[0]), tmp_path / "run")
    message = str(halt.value)
    assert "epoch 2, step 8" in message and str(tmp_path / "run" / "checkpoints" / "recovery-00000006") in message


def _read_only_runner(python_one_thread):
    """How to start killer.py so that it may make a folder read-only: as root, in its own user and mount
    namespace (root ignores file modes; a read-only bind mount stops it)."""
    if os.geteuid() != 0:
        return python_one_thread
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("running as root without user namespaces: no way to make a folder read-only")

    def run(*args, **kwargs):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        command = ["unshare", "--user", "--map-root-user", "--mount", sys.executable, *map(str, args)]
        return subprocess.run(command, env=env, **kwargs)

    return run


@pytest.mark.slow
@pytest.mark.parametrize("step_every", [0, 1], ids=["checkpoint-write-fails", "steps-jsonl-write-fails"])
def test_a_run_directory_made_read_only_mid_run_stops_cleanly_and_resumes(reference, python_one_thread, killer,
                                                                          tiny_train_config, tmp_path, step_every):
    # With per-step telemetry off the first write after step 5 is the recovery checkpoint of step 6; with it
    # on, steps.jsonl's line of step 6 comes first. Either way: a clear stop, nothing lost, an exact resume.
    config = fault_config(tiny_train_config, tmp_path / "config.yaml", logging={"step_every": step_every})
    out = tmp_path / "run"
    run = _read_only_runner(python_one_thread)
    stopped = run(killer, "readonly@step:5", config, out, capture_output=True, text=True, timeout=600)
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "u+w", str(out)], check=True)
    assert stopped.returncode == 2, stopped.stderr
    assert "Traceback" not in stopped.stderr
    if step_every:
        assert "steps.jsonl" in stopped.stderr and "checkpoints are intact" in stopped.stderr
    else:
        assert "cannot write checkpoint" in stopped.stderr and "recovery-00000006" in stopped.stderr
        assert "last -> last-00000004" in stopped.stderr  # named as intact
    assert train_cli(config, out) == 0
    assert_same_run(reference[1], out)


# ---- unreadable images and accumulation groups ---------------------------------------------------


class _Batch:
    def __init__(self, index: int, bad: list[str]):
        self.index, self.bad_paths = index, bad


class _Loader:
    """Batches as a TrainLoader yields them; ``len`` is the epoch's batch count (left-out ones included)."""

    def __init__(self, batches: list[_Batch], length: int):
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        return iter(self.batches)


def test_bad_paths_of_the_next_group_are_not_counted_before_its_step():
    """Batch 1 (no readable image) was left out by the loader: group 0 ends early when batch 2 arrives, and
    batch 2's paths (batch 1's, carried) belong to group 1, not to the step of group 0 (a recovery checkpoint
    taken there would count them, and a run resumed from it would count them again)."""
    loader = _Loader([_Batch(0, []), _Batch(2, ["b1.png"]), _Batch(3, ["b3.png"])], length=4)
    bad: list[str] = []
    groups = _step_groups(loader, 2, bad)
    assert [b.index for b in next(groups)] == [0] and bad == []  # what a checkpoint at this step counts
    assert [b.index for b in next(groups)] == [2, 3] and bad == ["b1.png", "b3.png"]
