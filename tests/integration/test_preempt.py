"""Graceful preemption: SIGTERM / SIGUSR1 / SIGUSR2 stop `vitreduce train` after the step in progress with a
recovery checkpoint and exit status 75; the rerun ends bitwise identical to an uninterrupted run."""
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
# after); 3 -> 4 ends epoch 1 of 3 x 4 steps, whose recovery state sits at the epoch's last batch.
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
    assert stopped.value.code == REQUEUE_EXIT and stopped.value.step == after + 1
    assert signal.getsignal(signum) == before  # the handlers are put back
    assert not (out / "done.json").exists()
    recovery = out / "checkpoints" / f"recovery-{after + 1:08d}"
    assert (out / "checkpoints" / "recovery").resolve() == recovery.resolve()
    result = train(config, out)
    assert result.resumed_from == str(recovery)
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
