"""Training one run of a study: under its lock (vitreduce.locks, the one `vitreduce train` takes too), its
output also appended to RUN_DIR/train.log, in this process or under torchrun. What became of the run is
an ``Outcome``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from enum import StrEnum

from vitreduce.console import LOGGED_ENV, tee
from vitreduce.errors import VitreduceError
from vitreduce.locks import RunLock
from vitreduce.study.plan import LOG, RunPlan
from vitreduce.study.spec import Launcher
from vitreduce.train import rundir


def to_stderr(line: str) -> None:
    """Where a study's progress lines go by default (its results go to stdout)."""
    print(line, file=sys.stderr, flush=True)


class OutcomeStatus(StrEnum):
    """What became of one run in this invocation."""

    SKIPPED = "skipped"  # finished before, or by another process meanwhile
    TRAINED = "trained"
    LOCKED = "locked"  # another process is training it
    SUBMITTED = "submitted"  # handed to SLURM (launcher: slurm), not waited for
    FAILED = "failed"


@dataclass
class Outcome:
    """What became of one run in this invocation."""

    plan: RunPlan
    status: OutcomeStatus
    message: str = ""
    wall_s: float = 0.0


@dataclass(frozen=True)
class RunLauncher:
    """Trains one run under its lock, its output also appended to RUN_DIR/train.log."""

    launcher: Launcher
    nproc_per_node: int
    threads: int
    total: int  # runs in the study, for the "[index/total]" tag
    prefix: bool = False  # prefix the run's lines with its label (runs side by side)

    def run(self, plan: RunPlan, index: int, status: rundir.RunStatus, echo) -> Outcome:
        """Train (or resume) ``plan``, the ``index``-th run; progress lines go to ``echo``."""
        tag = f"[{index}/{self.total}] {plan.label}"
        lock = RunLock(plan.run_dir)
        if not lock.acquire():
            message = f"being trained by another process ({lock.holder()}, {lock.path}); skipped here"
            echo(f"{tag}: {message}")
            return Outcome(plan, OutcomeStatus.LOCKED, message)
        if (plan.run_dir / rundir.DONE).is_file():  # another process finished it since this study looked
            lock.release()
            echo(f"{tag}: finished by another process meanwhile, skipped")
            return Outcome(plan, OutcomeStatus.SKIPPED)
        verb = "resuming" if status == rundir.RunStatus.RESUME else "training"
        echo(f"{tag}: {verb} in {plan.run_dir} (log: {plan.run_dir / LOG})")
        start = time.perf_counter()
        try:
            with tee(plan.run_dir / LOG, f"  [{plan.label}] " if self.prefix else ""):
                error = self._train(plan, lock)
        finally:
            lock.release()
        wall = time.perf_counter() - start
        if error:
            echo(f"{tag}: FAILED: {error} (log: {plan.run_dir / LOG})")
            return Outcome(plan, OutcomeStatus.FAILED, f"{error} (log: {plan.run_dir / LOG})", wall)
        final = json.loads((plan.run_dir / rundir.DONE).read_text()).get("final") or {}
        scores = ", ".join(f"{kind} top-1 {final[kind]['top1']:.2f}" for kind in ("ema", "raw") if final.get(kind))
        echo(f"{tag}: done in {wall:.{0 if wall >= 10 else 1}f} s ({scores})")
        return Outcome(plan, OutcomeStatus.TRAINED, wall_s=wall)

    def lost(self, plan: RunPlan, index: int, exitcode: int | None, echo) -> Outcome:
        """The outcome of a run whose worker process died (out of memory, a signal)."""
        message = f"its worker process died (exit code {exitcode}); see {plan.run_dir / LOG}"
        echo(f"[{index}/{self.total}] {plan.label}: FAILED: {message}")
        return Outcome(plan, OutcomeStatus.FAILED, message)

    def _train(self, plan: RunPlan, lock: RunLock) -> str:
        """Train; '' on success, else what went wrong (the traceback, if any, goes to the log)."""
        if self.launcher == "torchrun":
            return self._torchrun(plan, lock)
        from vitreduce.train.loop import train

        config = plan.config
        if self.prefix and config.logging.progress == "auto":  # side by side, bars would overwrite each other
            config = config.model_copy(update={"logging": config.logging.model_copy(update={"progress": "lines"})})
        try:
            train(config, plan.run_dir)
        except VitreduceError as err:
            print(f"error: {err}", file=sys.stderr)
            return str(err)
        except Exception as err:  # noqa: BLE001 (a crash of one run is reported; the study goes on)
            traceback.print_exc()
            return f"{type(err).__name__}: {err}"
        return ""

    def command(self, plan: RunPlan, display: bool = False) -> list[str]:
        """The command that trains ``plan`` (``display``: as a user would type it)."""
        train = ["vitreduce", "train", str(plan.run_dir / rundir.CONFIG), "--out", str(plan.run_dir)]
        if self.launcher == "python":
            return train if display else [sys.executable, "-m", *train]
        torchrun = ["torchrun"] if display else [sys.executable, "-m", "torch.distributed.run"]
        return [*torchrun, "--standalone", f"--nproc_per_node={self.nproc_per_node}", "-m", *train]

    def _torchrun(self, plan: RunPlan, lock: RunLock) -> str:
        command = self.command(plan)
        env = {**os.environ, **lock.child_env(), "OMP_NUM_THREADS": str(self.threads), "PYTHONUNBUFFERED": "1",
               LOGGED_ENV: "1"}  # this process appends the child's lines to train.log
        print(f"$ {' '.join(command)}", file=sys.stderr)
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              text=True, env=env, pass_fds=(lock.handle.fileno(),)) as proc:
            last, error = "", ""
            for line in proc.stdout:
                print(line, end="", file=sys.stderr, flush=True)
                last = line.strip() if line.strip().strip("=") else last  # torchrun's ==== rules say nothing
                error = line.strip() if "error:" in line else error  # `vitreduce train: error: ...`
        if proc.returncode == 0 and (plan.run_dir / rundir.DONE).is_file():
            return ""
        return f"torchrun exit code {proc.returncode}: {error or last or 'no output'}"
