"""Graceful preemption: SIGTERM / SIGUSR1 / SIGUSR2 stop `vitreduce train` after the step in progress with a
recovery checkpoint, or at start-up / right after the epoch's checkpoint when the signal arrives outside a
step, with exit status 75; the rerun ends bitwise identical to an uninterrupted run."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import pytest
from test_resume import assert_same_run, run_cli, write_config

from vitreduce.train.config import TrainConfig
from vitreduce.train.loop import train
from vitreduce.train.preempt import REQUEUE_EXIT, Preempted

# Seeded points: the signal arrives during the step after step N (N + 1 is then the step the run stops
# after); 3 -> 4 ends epoch 1 of 3 x 4 steps, whose recovery state sits at the epoch's last batch. A signal
# right after an epoch's last step (N = 4 or 8) arrives during the evaluation: the run stops at the epoch's
# checkpoint.
_rng = random.Random(14)
POINTS = [(signal.SIGTERM, 3), (signal.SIGUSR1, _rng.randint(4, 10)), (signal.SIGUSR2, _rng.randint(1, 10))]


def signal_at(step: int, signum: int):
    """An ``on_event`` hook sending ``signum`` to this process after the ``step``-th optimizer step."""
    seen = 0

    def on_event(event: str) -> None:
        nonlocal seen
        if event == "step":
            seen += 1
            if seen == step:
                os.kill(os.getpid(), signum)

    return on_event


@pytest.fixture(scope="module")
def reference(tiny_train_config, tmp_path_factory):
    """The uninterrupted run, in this process."""
    out = tmp_path_factory.mktemp("preempt") / "reference"
    train(TrainConfig.model_validate(tiny_train_config()), out)
    return out


@pytest.mark.parametrize(("signum", "after"), POINTS, ids=[f"{s.name}@{n}" for s, n in POINTS])
def test_signal_stops_after_the_step_and_rerun_is_bitwise_identical(reference, tiny_train_config, tmp_path,
                                                                    signum, after):
    config = TrainConfig.model_validate(tiny_train_config())
    out = tmp_path / "run"
    before = signal.getsignal(signum)
    with pytest.raises(Preempted) as stopped:
        train(config, out, on_event=signal_at(after, signum))
    # after an epoch's last step (4, 8) the run stops at the epoch's checkpoint, before the next step
    stop, kind = (after, "last") if after % 4 == 0 else (after + 1, "recovery")
    assert stopped.value.code == REQUEUE_EXIT and stopped.value.step == stop
    assert signal.getsignal(signum) == before  # the handlers are put back
    assert not (out / "done.json").exists()
    checkpoint = out / "checkpoints" / f"{kind}-{stop:08d}"
    assert (out / "checkpoints" / kind).resolve() == checkpoint.resolve()
    result = train(config, out)
    assert result.resumed_from == str(checkpoint)
    assert_same_run(reference, out)


def _sends_then_calls(function, signum: int, times: list[int]):
    """``function`` wrapped to send ``signum`` to this process before its first call (noting the call)."""

    def wrapped(*args, **kwargs):
        if not times:
            os.kill(os.getpid(), signum)
        times.append(1)
        return function(*args, **kwargs)

    return wrapped


# (where the signal arrives, the step the run stops at): start-up (building the model), the first epoch's
# evaluation, the first epoch's checkpoint write (its files written, not yet visible).
OUTSIDE_STEPS = [("start-up", 0), ("evaluation", 4), ("epoch checkpoint", 4)]


@pytest.mark.parametrize(("moment", "stop_step"), OUTSIDE_STEPS, ids=[m for m, _ in OUTSIDE_STEPS])
def test_signal_outside_a_step_stops_before_the_next_step(reference, tiny_train_config, tmp_path, monkeypatch,
                                                          moment, stop_step):
    """No further optimizer step: the run stops at start-up, or right after the epoch's checkpoint."""
    import vitreduce.train.loop as loop

    config = TrainConfig.model_validate(tiny_train_config())
    out, calls, steps = tmp_path / "run", [], []

    def on_event(event: str) -> None:
        steps.extend([event] if event == "step" else [])
        if moment == "epoch checkpoint" and event == "save" and len(steps) == 4 and not calls:
            os.kill(os.getpid(), signal.SIGTERM)
            calls.append(event)

    if moment == "start-up":
        monkeypatch.setattr(loop, "start_model", _sends_then_calls(loop.start_model, signal.SIGTERM, calls))
    elif moment == "evaluation":
        monkeypatch.setattr(loop, "evaluate", _sends_then_calls(loop.evaluate, signal.SIGTERM, calls))
    with pytest.raises(Preempted) as stopped:
        train(config, out, on_event=on_event)
    assert calls, "the signal was never sent"
    assert stopped.value.code == REQUEUE_EXIT and stopped.value.step == stop_step == len(steps)
    done_epochs = len((out / "metrics.jsonl").read_text().splitlines()) if stop_step else 0
    assert done_epochs == stop_step // 4 and not (out / "done.json").exists()
    monkeypatch.undo()
    result = train(config, out)
    assert result.resumed_from == (str(out / "checkpoints" / "last-00000004") if stop_step else None)
    assert_same_run(reference, out)


@pytest.mark.slow
def test_cli_exits_with_requeue_status_on_sigusr1(reference, tiny_train_config, tmp_path, python_one_thread):
    """The real command, signalled from outside once it has taken a step."""
    config = write_config(tmp_path / "config.yaml", tiny_train_config())
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen([sys.executable, "-m", "vitreduce", "train", str(config), "--out", str(out)],
                          stderr=subprocess.PIPE, text=True, env=env) as proc:
        for line in proc.stderr:  # progress lines: "epoch 1/3 batch 1/4 loss ..." once a step is taken
            if " batch " in line and " loss " in line:
                proc.send_signal(signal.SIGUSR1)
                break
        stderr = proc.stderr.read()
    assert proc.returncode == REQUEUE_EXIT, stderr
    assert "stopped on SIGUSR1" in stderr and not (out / "done.json").exists()
    resumed = run_cli(python_one_thread, config, out)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    assert_same_run(reference, out)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_signal_before_the_command_has_started_stops_it_with_the_requeue_status(tiny_train_config, tmp_path,
                                                                                   signum):
    """A signal that arrives before `vitreduce train` has run a line (held by the parent's signal mask until the
    command takes its handlers, first thing, before importing torch) stops the run before its first step with
    exit status 75: neither killed by the default action nor lost."""
    config = write_config(tmp_path / "config.yaml", tiny_train_config())
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen([sys.executable, "-m", "vitreduce", "train", str(config), "--out", str(out)],
                          stderr=subprocess.PIPE, text=True, env=env,
                          preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signum})) as proc:
        proc.send_signal(signum)  # pending in the child from its first instruction
        stderr = proc.stderr.read()
    assert proc.returncode == REQUEUE_EXIT, stderr
    assert f"stopped on {signum.name} before the first step" in stderr and not (out / "done.json").exists()
