"""What each task of a study's SLURM job runs: ``python -m vitreduce.study.slurm_job FOLDER`` (the command
vitreduce.study.slurm has submitit put in the job script), then ``RunJob``, one rank of one run.

Signals first: SLURM sends SIGTERM on preemption and the job's ``--signal`` (USR2) before its time limit,
possibly while the task is still importing torch (20-30 s on a busy node). This module's entry notes
them before anything heavy is imported (``train.preempt.catch_early``), hands over to submitit's
``process_job`` (which loads the pickled ``RunJob``), and ``RunJob`` takes the handlers back from submitit
before training; the run stops at its first safe point with its state on disk, start-up included.

Requeues: SLURM's own count (SLURM_RESTART_COUNT, the same in every task of the job) is the number of
times this job has been requeued, whatever requeued it (a preemption with ``--requeue``, this module on a
time-limit warning, ``scontrol requeue`` by hand, a node failure). A stop with ``slurm.max_requeues``
requeues spent fails the run instead of requeueing it; a job SLURM requeues anyway (a preemption) fails at
its start. Every attempt is recorded in RUN_DIR/job.json (``status`` reads it).

This module imports no torch at import time.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vitreduce.files import write_json
from vitreduce.train import preempt

JOBS = "jobs.json"  # STUDY_DIR/slurm/jobs.json: {run label: {"job_id", "submitted", "cluster"}}
JOB = "job.json"  # RUN_DIR/job.json: {"requeues": N, "attempts": [{"job_id", "host", "started", "ended", "end"}]}
SLURM_DIR = "slurm"  # STUDY_DIR/slurm/: submitit's scripts and logs, jobs.json
LOG = "train.log"  # RUN_DIR/train.log: rank 0's output (vitreduce.study.plan.LOG)


class RunFailed(RuntimeError):
    """The run is failed without training (or further requeues): the job ends FAILED with this reason."""


class RunJob:
    """One task (rank) of the SLURM job of one run: train the run directory, every task a rank of it.

    Args:
        run_dir: the run directory (the study has written its config.yaml).
        max_requeues: requeues allowed before the run is failed.
        threads: torch threads of each task (``slurm.cpus_per_task``; recorded in run.json).
        on_event: fault injection for tests (``train.loop.EventHook``); None in normal use.
    """

    def __init__(self, run_dir: str, max_requeues: int, threads: int = 1, on_event=None):
        self.run_dir, self.max_requeues, self.threads, self.on_event = Path(run_dir), max_requeues, threads, on_event

    def __call__(self) -> str:
        preempt.catch_early()  # submitit installed its own handlers meanwhile: ours again, nothing noted lost
        import submitit

        env = submitit.JobEnvironment()
        main, restarts = env.global_rank == 0, requeue_count()
        if main:
            _record(self.run_dir, requeues=restarts, started=time.time(), job_id=env.job_id,
                    host=socket.gethostname(), threads=self.threads)
        if restarts > self.max_requeues:  # SLURM requeued it past the limit (a preemption): not trained again
            self._fail(main, f"requeued {restarts} times, more than slurm.max_requeues ({self.max_requeues}); not "
                             "trained again (rerun the study to submit it anew)", spent=True)
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        try:
            self._train(main)
        except preempt.Preempted as stopped:
            self._stopped(main, stopped, env.job_id, restarts)
            raise  # exit status 75, no result: the requeued job runs again
        except BaseException as err:
            if main:
                _record(self.run_dir, end="failed", ended=time.time(), error=f"{type(err).__name__}: {err}")
            raise
        if main:
            _record(self.run_dir, end="done", ended=time.time())
        return "done"

    def _train(self, main: bool) -> None:
        from vitreduce.console import tee
        from vitreduce.device import torch_threads
        from vitreduce.train.config import load_config
        from vitreduce.train.loop import train
        from vitreduce.train.rundir import CONFIG

        with tee(self.run_dir / LOG) if main else contextlib.nullcontext(), torch_threads(self.threads):
            train(load_config(self.run_dir / CONFIG), self.run_dir, on_event=self.on_event)

    def _stopped(self, main: bool, stopped: preempt.Preempted, job_id: str, restarts: int) -> None:
        """After a stop: fail the run when its requeues are spent, else record it and, on the time-limit signal,
        requeue the job (SIGTERM is SLURM's preemption, which requeues the job itself, or a cancellation)."""
        name = signal.Signals(stopped.signum).name
        if restarts >= self.max_requeues:
            self._fail(main, f"stopped by {name} {stopped.where} after {restarts} requeue(s): slurm.max_requeues "
                             f"({self.max_requeues}) reached, not requeued (rerun the study to submit it anew)",
                       final=False, spent=True)
        if not main:
            return
        preempted = stopped.signum == signal.SIGTERM
        _record(self.run_dir, end="preempted" if preempted else "requeued", ended=time.time(), signal=name)
        if not preempted:
            try:
                requeue(job_id)
            except RunFailed as err:
                self._fail(main, str(err))

    def _fail(self, main: bool, reason: str, final: bool = True, spent: bool = False) -> None:
        """Record the failure (``spent``: the requeues are); end the task with an error submitit reports
        (``final``), or with exit status 1 and no result: SLURM may still requeue a preempted job, whose next
        start then fails."""
        if main:
            _record(self.run_dir, end="failed", ended=time.time(), error=reason, requeues_spent=spent)
        if not final:
            raise SystemExit(f"vitreduce: {reason}")
        raise RunFailed(reason)


def requeue_count() -> int:
    """How often SLURM has requeued this job (SLURM_RESTART_COUNT; 0 on its first run)."""
    value = os.environ.get("SLURM_RESTART_COUNT", "0").strip()
    return int(value) if value.isdigit() else 0


def requeue(job_id: str) -> None:
    """Put the job back in SLURM's queue (it resumes from the run directory), or fail loudly."""
    done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RunFailed(f"scontrol requeue {job_id} failed ({done.stderr.strip() or done.returncode}); "
                        "rerun the study to submit the run again (it resumes)")


def read_job(run_dir: Path) -> dict[str, Any]:
    """RUN_DIR/job.json ({} when the run has never run as a job)."""
    try:
        return json.loads((run_dir / JOB).read_text())
    except (OSError, ValueError):
        return {}


def _record(run_dir: Path, requeues: int | None = None, **attempt: Any) -> None:
    """Update job.json: ``started`` opens a new attempt, other keys complete the newest one."""
    record = read_job(run_dir)
    record.setdefault("requeues", 0)
    attempts = record.setdefault("attempts", [])
    if requeues is not None:
        record["requeues"] = requeues
    if "started" in attempt or not attempts:
        attempts.append({})
    attempts[-1].update(attempt)
    write_json(run_dir / JOB, record)


def main(argv: list[str] | None = None) -> None:
    """The job's command: note stop signals, then submitit runs the pickled ``RunJob`` in FOLDER."""
    preempt.catch_early()
    from submitit.core.submission import process_job

    process_job((argv if argv is not None else sys.argv[1:])[0])


if __name__ == "__main__":
    main()
