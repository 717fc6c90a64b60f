"""Where each run of a study stands (`vitreduce study status STUDY_DIR`), read from its files.

A run is ``done`` (done.json), ``running`` (its lock is held, or SLURM says so), ``requeued`` (stopped by a
signal and handed back to the scheduler), ``failed`` (an error, a job killed, too many requeues) or
``pending`` (submitted and waiting, or not started, or stopped and waiting for a rerun). Sources:
RUN_DIR/job.json (each job attempt, written by vitreduce.study.slurm_job), STUDY_DIR/slurm/jobs.json (the job
ids), metrics.jsonl, done.json, train.log; and, where ``sacct`` is on the PATH, SLURM's own state of each
job. A study run with the local launchers (no jobs) has its states from the files alone: a run whose
train.log ends on an error is ``failed``.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from vitreduce.config_tree import read_yaml
from vitreduce.console import clock, text_table
from vitreduce.errors import VitreduceError
from vitreduce.locks import LOCK_FILE
from vitreduce.study.plan import LOG, SPEC_FILE, RunPlan, expand
from vitreduce.study.slurm_job import JOBS, SLURM_DIR, read_job
from vitreduce.study.spec import parse_spec
from vitreduce.train import rundir

TAIL = 5  # log lines shown for a failed run
_PROGRESS = ("epoch ", "resuming ", "done: ")  # train.log lines of a training session under way
_ERRORS = ("error: ", "vitreduce train: error: ")  # how a failed run's error starts (in process, under torchrun)
Scheduler = Callable[[str], str | None]  # job id -> SLURM state (PENDING, RUNNING, ...) or None if unknown


class RunState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    REQUEUED = "requeued"
    DONE = "done"
    FAILED = "failed"


# SLURM job states (sacct) -> run states; COMPLETED is done or failed by the run's done.json.
_SLURM = {"PENDING": RunState.PENDING, "REQUEUED": RunState.REQUEUED, "REQUEUE_HOLD": RunState.REQUEUED,
          "REQUEUE_FED": RunState.REQUEUED, "PREEMPTED": RunState.REQUEUED, "RUNNING": RunState.RUNNING,
          "COMPLETING": RunState.RUNNING, "CONFIGURING": RunState.RUNNING, "SUSPENDED": RunState.RUNNING}


@dataclass
class RunLine:
    """One run's line of the status table."""

    label: str
    state: RunState
    job_id: str = "-"
    epoch: int = 0
    epochs: int = 0
    metric: str = "-"
    time_s: float | None = None
    log: Path | None = None
    tail: list[str] = field(default_factory=list)  # for a failed run: why, then the log's last lines


def study_status(study_dir: str | Path, scheduler: Scheduler | None = None) -> list[RunLine]:
    """Every run of the study in ``study_dir``, in the spec's order.

    Args:
        scheduler: job id -> SLURM state; default ``sacct`` through submitit where it is on the PATH.
    """
    study_dir = Path(study_dir)
    if not (study_dir / SPEC_FILE).is_file():
        raise VitreduceError(f"{study_dir} holds no {SPEC_FILE}: not a study directory "
                             "(one made by vitreduce study SPEC --out DIR)")
    spec = parse_spec(read_yaml(study_dir / SPEC_FILE), source=str(study_dir / SPEC_FILE))
    jobs = read_jobs(study_dir)
    if scheduler is None and shutil.which("sacct") and any(j.get("cluster") == "slurm" for j in jobs.values()):
        scheduler = _sacct(study_dir)
    plans = expand(spec, study_dir, timm=False)  # checked with timm when the study was made; read here without torch
    return [_line(plan, jobs.get(plan.label, {}), scheduler, study_dir) for plan in plans]


def _line(plan: RunPlan, job: dict[str, Any], scheduler: Scheduler | None, study_dir: Path) -> RunLine:
    record = read_job(plan.run_dir)
    attempts = record.get("attempts", [])
    job_id = str(attempts[-1].get("job_id") or job.get("job_id") or "-") if attempts else job.get("job_id", "-")
    line = RunLine(plan.label, RunState.PENDING, str(job_id), epochs=plan.config.epochs, log=plan.run_dir / LOG)
    _progress(line, plan.run_dir, attempts)
    state, why = _state(plan.run_dir, job, attempts, scheduler(str(job_id)) if scheduler and job else None)
    line.state = state
    if state is RunState.FAILED:
        scheduler_log = _scheduler_log(study_dir, str(job_id)) if job else None
        if scheduler_log is not None and (not why or why.startswith("SLURM job state")):
            why = "; ".join(filter(None, [_log_error(scheduler_log, progress=False), why]))
        if scheduler_log is not None and not _log_error(line.log):  # the traceback is in submitit's log
            line.log = scheduler_log
        line.tail = why.splitlines() + _tail(line.log)
    return line


def _scheduler_log(study_dir: Path, job_id: str) -> Path | None:
    """The stderr of the job's first task (STUDY_DIR/slurm/<id>/<id>_0_log.err, submitit's layout): where
    a job's traceback, and an error before Python started (a bad setup line), go. None if it is empty."""
    path = study_dir / SLURM_DIR / job_id / f"{job_id}_0_log.err"
    try:
        return path if path.stat().st_size else None
    except OSError:
        return None


def _state(run_dir: Path, job: dict[str, Any], attempts: list[dict[str, Any]],
           slurm: str | None) -> tuple[RunState, str]:
    """The run's state and, when failed, why."""
    try:
        if rundir.read_done(run_dir) is not None:
            return RunState.DONE, ""
    except VitreduceError as err:  # a truncated done.json is no finished run
        return RunState.FAILED, str(err)
    if _locked(run_dir):
        return RunState.RUNNING, ""
    last = attempts[-1] if attempts else {}
    end = last.get("end")
    slurm = None if slurm in ("UNKNOWN", "READY") else slurm  # not in SLURM's accounting (yet): the files decide
    this_job = bool(job) and last.get("job_id") == job.get("job_id")  # the newest attempt is of the job SLURM has
    state = _SLURM.get(slurm.split()[0]) if slurm else None
    # A failed attempt is the run's state while its job ends (sacct still RUNNING) and after a requeue that will
    # fail at its start (requeues spent); only a job requeued by hand (scontrol requeue) is waiting again.
    if this_job and end == "failed" and (last.get("requeues_spent") or state not in (RunState.PENDING,
                                                                                    RunState.REQUEUED)):
        return RunState.FAILED, last.get("error", "")
    if state is not None:
        stopped = this_job and end in ("requeued", "preempted")
        return (RunState.REQUEUED if state is RunState.PENDING and stopped else state), ""  # sacct: PENDING
    if slurm is not None and slurm != "COMPLETED":  # FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL...
        return RunState.FAILED, f"SLURM job state {slurm}"
    if end == "failed":
        return RunState.FAILED, last.get("error", "")
    if end in ("requeued", "preempted"):
        return RunState.REQUEUED, ""
    if last:  # started, and neither running nor ended as recorded: killed (out of memory, node failure)
        return RunState.FAILED, "the job ended without finishing the run (killed?); rerun the study to resubmit it"
    if not job and (error := _log_error(run_dir / LOG)):  # never a job: a local study's run, told by its log
        return RunState.FAILED, error
    return RunState.PENDING, ""


def _log_error(log: Path, progress: bool = True) -> str:
    """The error a run's last session ended with, from train.log ('' if it did not end on one): a local study
    writes ``error: ...`` (``vitreduce train: error: ...`` under torchrun) or a traceback there when a run
    fails; a later session (a rerun resuming the run) logs progress after it. With ``progress`` False (a
    job's stderr), the traceback's exception line, or the last line (an error before Python started)."""
    try:
        lines = [t for t in log.read_text(errors="replace").splitlines() if t.strip() and not t.startswith("srun:")]
    except OSError:
        return ""
    starts = [i for i, text in enumerate(lines) if text.startswith((*_ERRORS, "Traceback (most recent call last)"))]
    if not progress:
        after = [t for t in lines[starts[-1] + 1:] if not t.startswith(" ")] if starts else lines[-1:]
        return after[-1] if after else ""
    if not starts or any(text.startswith(_PROGRESS) for text in lines[starts[-1]:]):
        return ""
    first = lines[starts[-1]]
    return first if first.startswith(_ERRORS) else next(t for t in reversed(lines) if t.strip())


def _progress(line: RunLine, run_dir: Path, attempts: list[dict[str, Any]]) -> None:
    """Epoch reached, its metric and the time used, from metrics.jsonl, done.json and job.json."""
    records = []
    with contextlib.suppress(OSError, ValueError):
        records = [json.loads(text) for text in (run_dir / rundir.METRICS).read_text().splitlines() if text.strip()]
    if records:
        last = records[-1]
        line.epoch = int(last.get("epoch", len(records)))
        kind = "ema" if last.get("ema") else "raw"
        if last.get(kind):
            line.metric = f"{kind} top1 {last[kind]['top1']:.2f}"
    try:
        line.time_s = float(json.loads((run_dir / rundir.DONE).read_text())["wall_s"])
        return
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if attempts:
        line.time_s = sum((a.get("ended") or time.time()) - a["started"] for a in attempts if "started" in a)
    elif records:
        line.time_s = sum(float(r.get("epoch_time_s") or 0) for r in records)


def _locked(run_dir: Path) -> bool:
    """Whether a process holds the run's lock (it is training), without taking it."""
    try:
        with open(run_dir / LOCK_FILE) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:
        pass
    return False


def read_jobs(study_dir: Path) -> dict[str, dict[str, Any]]:
    """STUDY_DIR/slurm/jobs.json: each submitted run's newest job."""
    try:
        return json.loads((study_dir / SLURM_DIR / JOBS).read_text())
    except (OSError, ValueError):
        return {}


def _tail(log: Path, lines: int = TAIL) -> list[str]:
    try:
        return log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def _sacct(study_dir: Path) -> Scheduler:
    import submitit

    folder = study_dir / SLURM_DIR / "%j"

    def state(job_id: str) -> str | None:
        try:
            return submitit.SlurmJob(folder, job_id).state
        except Exception:  # noqa: BLE001 (no accounting, or the job is too old: fall back to the files)
            return None

    return state


def format_status(lines: list[RunLine]) -> str:
    """The table, then each failed run's reason, log path and last log lines."""
    rows = [[ln.label, ln.state.value, ln.job_id, f"{ln.epoch}/{ln.epochs}", ln.metric,
             clock(ln.time_s) if ln.time_s is not None else "-"] for ln in lines]
    text = [text_table(["run", "state", "job", "epoch", "last metric", "time"], rows)]
    counts = {state: sum(ln.state is state for ln in lines) for state in RunState}
    text.append(", ".join(f"{n} {state.value}" for state, n in counts.items() if n))
    for ln in lines:
        if ln.state is RunState.FAILED:
            text.append(f"\n{ln.label} failed; log: {ln.log}")
            text += [f"  | {row}" for row in ln.tail]
    return "\n".join(text)
