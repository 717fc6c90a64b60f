"""Fault injection for the jobs of the fake SLURM: an ``on_event`` hook (train.loop.EventHook) that has the
scheduler preempt the job, or send its time-limit signal, after a chosen step of a chosen attempt."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

FAKE_SLURM = Path(__file__).resolve().parent / "fake_slurm.py"


class Interrupt:
    """``plan``: {attempt (SLURM_RESTART_COUNT): ("preempt" or "timeout", step)}. After that step of this
    process, rank 0 asks the scheduler for it (preempt: SIGTERM to every task, then SLURM requeues the job;
    timeout: ``scancel --signal=USR2``, what ``--signal=USR2@T`` sends before the limit) and every rank waits
    until the signal has arrived, so the run stops at a known step whatever the machine's speed."""

    def __init__(self, plan: dict[int, tuple[str, int]]):
        self.plan, self.seen = plan, 0

    def __call__(self, event: str) -> None:
        if event != "step":
            return
        self.seen += 1
        what = self.plan.get(int(os.environ.get("SLURM_RESTART_COUNT", "0")))
        if what is None or self.seen != what[1]:
            return
        job = os.environ["FAKE_SLURM_JOB"]
        if os.environ.get("SLURM_PROCID") == "0":
            command = ([sys.executable, str(FAKE_SLURM), "preempt", job] if what[0] == "preempt"
                       else ["scancel", "--signal=USR2", job])
            subprocess.run(command, check=True)
        from vitreduce.train import preempt

        while not preempt.signalled():
            time.sleep(0.01)
