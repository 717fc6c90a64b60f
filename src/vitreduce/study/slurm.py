"""A study on SLURM through submitit: one job per run (a job array), requeued from its checkpoint.

``check_cluster`` checks the machine and the study directory (a shared filesystem when a run spans several
nodes) before the study writes anything; ``submit_runs`` then submits every run that is neither finished
nor already queued or running as one submitit job array, and records the job ids in
STUDY_DIR/slurm/jobs.json (submitit's scripts and logs go to STUDY_DIR/slurm/).
Each job runs ``RunJob``: every task is a rank of one DDP run (submitit's TorchDistributedEnvironment
sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, which ``train.distributed`` reads), the
run's output is appended to RUN_DIR/train.log, and each attempt is recorded in RUN_DIR/job.json.

Preemption and time limits: submitit has SLURM send USR2 ``signal_delay_s`` before the limit (and on
preemption); the run stops at the first safe point with its state on disk (train.preempt), and
``RunJob`` hands over to submitit, which calls ``RunJob.checkpoint`` and requeues the job. The requeued
job resumes from the run directory exactly. After ``max_requeues`` requeues the run is failed instead.
"""
from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

import submitit
from submitit.core.job_environment import JobEnvironment

from vitreduce.console import tee
from vitreduce.errors import VitreduceError
from vitreduce.files import write_json
from vitreduce.study.launch import Outcome, OutcomeStatus
from vitreduce.study.plan import LOG, RunPlan
from vitreduce.study.spec import SlurmOptions
from vitreduce.study.status import JOB, JOBS, SLURM_DIR, RunState, read_job, read_jobs, study_status
from vitreduce.train import rundir

# Filesystems every node of a cluster sees (/proc/mounts types); others are refused for nodes > 1.
SHARED_FS = ("nfs", "nfs4", "lustre", "gpfs", "beegfs", "cephfs", "ceph", "fuse.ceph", "glusterfs",
             "fuse.glusterfs", "panfs", "wekafs", "fuse.weka", "fuse.juicefs", "cifs", "smb3", "virtiofs")


def sbatch_parameters(options: SlurmOptions, name: str) -> dict[str, Any]:
    """The parameters of submitit's SlurmExecutor (sbatch's names) for ``options``: one task per GPU."""
    params = dict(job_name=name, nodes=options.nodes, ntasks_per_node=max(options.gpus_per_node, 1),
                  gpus_per_node=options.gpus_per_node or None, cpus_per_task=options.cpus_per_task,
                  mem=f"{options.mem_gb}GB", time=options.timeout_min, signal_delay_s=options.signal_delay_s,
                  partition=options.partition, account=options.account, qos=options.qos,
                  constraint=options.constraint, additional_parameters=dict(options.additional) or None,
                  setup=list(options.setup) or None, array_parallelism=options.array_parallelism)
    return {key: value for key, value in params.items() if value is not None}


def sbatch_header(options: SlurmOptions, name: str, study_dir: Path) -> list[str]:
    """The #SBATCH lines of each run's job, as submitit writes them (the dry run shows them)."""
    from submitit.slurm.slurm import _make_sbatch_string  # submitit's own writer, pinned version

    text = _make_sbatch_string(command="", folder=str(study_dir / SLURM_DIR / "%j"), **sbatch_parameters(options, name))
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


def make_executor(options: SlurmOptions, folder: Path, name: str, cluster: str = "slurm") -> submitit.Executor:
    """submitit's executor for the jobs: ``slurm``, or ``local`` (the same jobs as subprocesses of this
    machine, with the same time limit and signal; what the tests use)."""
    if cluster == "local":
        executor = submitit.LocalExecutor(folder, max_num_timeout=options.max_requeues)
        executor.update_parameters(timeout_min=options.timeout_min, signal_delay_s=options.signal_delay_s,
                                   tasks_per_node=max(options.gpus_per_node, 1), gpus_per_node=options.gpus_per_node)
        return executor
    executor = submitit.SlurmExecutor(folder, max_num_timeout=options.max_requeues)
    executor.update_parameters(**sbatch_parameters(options, name))
    return executor


def check_shared_filesystem(study_dir: Path, nodes: int, mounts: str = "/proc/mounts") -> str:
    """The study directory's filesystem type; refuses one other nodes cannot see when ``nodes`` > 1.

    Every job writes into the study directory and a run on several nodes writes from all of them, so
    with nodes > 1 it must be on a shared filesystem (``SHARED_FS``); under /tmp or /dev/shm it is
    refused whatever the node count (node-local on every cluster).
    """
    path = study_dir.resolve()
    if any(path == Path(p) or Path(p) in path.parents for p in ("/tmp", "/dev/shm", "/var/tmp")):
        raise VitreduceError(f"{study_dir} is under a node-local folder ({path}); SLURM jobs on other nodes would "
                             "not see it. Put the study directory on the cluster's shared filesystem (--out)")
    fstype = _fs_type(path, mounts)
    if nodes > 1 and fstype not in SHARED_FS:
        raise VitreduceError(f"{study_dir} is on a {fstype or 'unknown'} filesystem, which the {nodes} nodes of a run "
                             f"may not share; use --out on a shared filesystem ({', '.join(SHARED_FS[:6])}, ...)")
    return fstype


def check_cluster(study_dir: Path, nodes: int) -> None:
    """Refuse, before anything is written, a machine without SLURM's commands or a study directory that the
    job's nodes cannot all see."""
    check_slurm_commands()
    check_shared_filesystem(study_dir, nodes)


def check_slurm_commands() -> None:
    """Refuses to submit where SLURM's commands are missing (not a login node of a SLURM cluster)."""
    missing = [name for name in ("sbatch", "srun") if shutil.which(name) is None]
    if missing:
        raise VitreduceError(f"launcher: slurm needs SLURM's {' and '.join(missing)} on the PATH, which this machine "
                             "lacks: submit from a login node of the cluster, or use --dry-run to print each run's "
                             "command, or --launcher python / torchrun to train here")


def _fs_type(path: Path, mounts: str) -> str:
    """The type of the filesystem ``path`` is on, from the longest matching mount point ('' when unknown)."""
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError:
        return ""
    best, fstype = -1, ""
    for line in lines:
        fields = line.split()
        if len(fields) >= 3:
            point = Path(fields[1].replace("\\040", " "))
            if (point == path or point in path.parents) and len(str(point)) > best:
                best, fstype = len(str(point)), fields[2]
    return fstype


class RunJob(submitit.helpers.Checkpointable):
    """What one SLURM job runs: train one run directory (every task a rank of it), requeue on a stop signal.

    Args:
        run_dir: the run directory (the study has written its config.yaml).
        max_requeues: requeues allowed before the run is failed.
        on_event: fault injection for tests (``train.loop.EventHook``); None in normal use.
    """

    def __init__(self, run_dir: str, max_requeues: int, on_event=None):
        self.run_dir, self.max_requeues, self.on_event = Path(run_dir), max_requeues, on_event

    def __call__(self) -> str:
        from vitreduce.train.config import load_config
        from vitreduce.train.loop import train
        from vitreduce.train.preempt import Preempted

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        main = env.global_rank == 0
        if main:
            _record(self.run_dir, started=time.time(), job_id=env.job_id, host=socket.gethostname())
        try:
            with tee(self.run_dir / LOG) if main else contextlib.nullcontext():
                train(load_config(self.run_dir / rundir.CONFIG), self.run_dir, on_event=self.on_event)
        except Preempted as stopped:
            if not main:
                return "preempted"  # rank 0 requeues the job (all its tasks)
            _record(self.run_dir, end="requeued", ended=time.time())
            if stopped.signum == signal.SIGTERM:
                raise  # SLURM's own preemption: it requeues the job (exit status 75 otherwise)
            signal.raise_signal(JobEnvironment._usr_sig())  # submitit's handler: checkpoint() and requeue
            raise
        except BaseException as err:
            if main:
                _record(self.run_dir, end="failed", ended=time.time(), error=f"{type(err).__name__}: {err}")
            raise
        if main:
            _record(self.run_dir, end="done", ended=time.time())
        return "done"

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission | None:
        """Called by submitit before it requeues: this same job (it resumes from the run directory), or None
        once the run has been requeued ``max_requeues`` times (submitit then fails the job)."""
        record = read_job(self.run_dir)
        if record.get("requeues", 0) >= self.max_requeues:
            _record(self.run_dir, end="failed", ended=time.time(),
                    error=f"requeued {self.max_requeues} times (slurm.max_requeues); not requeued again")
            return None
        _record(self.run_dir, requeues=record.get("requeues", 0) + 1)
        return submitit.helpers.DelayedSubmission(self)


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


def submit_runs(plans: list[RunPlan], options: SlurmOptions, study_dir: Path, name: str, echo,
                cluster: str = "slurm", on_event=None) -> list[Any]:
    """Submit ``plans`` (the runs to train) as one job array; their submitit jobs, ids recorded in jobs.json.

    Args:
        cluster: ``slurm``, or ``local`` (submitit's LocalExecutor: subprocesses of this machine).
        on_event: fault injection for tests, handed to every ``RunJob``.
    """
    folder = study_dir / SLURM_DIR
    executor = make_executor(options, folder / "%j", name, cluster)
    with executor.batch():
        jobs = [executor.submit(RunJob(str(plan.run_dir), options.max_requeues, on_event)) for plan in plans]
    recorded = read_jobs(study_dir)
    for plan, job in zip(plans, jobs, strict=True):
        recorded[plan.label] = {"job_id": str(job.job_id), "submitted": time.time(), "cluster": cluster}
        echo(f"{plan.label}: submitted as job {job.job_id} (log: {plan.run_dir / LOG})")
    write_json(folder / JOBS, recorded)
    return jobs


def wait_for(jobs: list[Any], plans: list[RunPlan], echo) -> dict[str, str]:
    """Wait for every job to end; each run's error ('' when it finished)."""
    errors = {}
    for plan, job in zip(plans, jobs, strict=True):
        try:
            job.result()
            errors[plan.label] = "" if (plan.run_dir / rundir.DONE).is_file() else "ended without done.json"
        except Exception as err:  # noqa: BLE001 (submitit's error carries the job's traceback)
            errors[plan.label] = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        echo(f"{plan.label}: job {job.job_id} " + (f"FAILED: {errors[plan.label]}" if errors[plan.label] else "done"))
    return errors


def submit_study(options: SlurmOptions, name: str, study_dir: Path, todo: list[RunPlan], echo, wait: bool = False,
                 cluster: str = "slurm", on_event=None) -> list[Outcome]:
    """Submit the unfinished runs that no job is queued or running for; wait for them with ``wait``.

    Returns one outcome per run of ``todo``: LOCKED (a job already has it), SUBMITTED, or with ``wait``
    TRAINED / FAILED.
    """
    states = {line.label: line for line in study_status(study_dir)}
    outcomes, submit = [], []
    for plan in todo:
        line = states[plan.label]
        queued = line.state is RunState.PENDING and line.job_id != "-"
        if line.state in (RunState.RUNNING, RunState.REQUEUED) or queued:
            echo(f"{plan.label}: job {line.job_id} is {line.state.value}; not submitted again")
            outcomes.append(Outcome(plan, OutcomeStatus.LOCKED, f"job {line.job_id} is {line.state.value}"))
        else:
            submit.append(plan)
    if not submit:
        return outcomes
    jobs = submit_runs(submit, options, study_dir, name, echo, cluster, on_event)
    if not wait:
        return outcomes + [Outcome(p, OutcomeStatus.SUBMITTED, f"job {job.job_id}")
                           for p, job in zip(submit, jobs, strict=True)]
    errors = wait_for(jobs, submit, echo)
    return outcomes + [Outcome(p, OutcomeStatus.FAILED if errors[p.label] else OutcomeStatus.TRAINED,
                               f"{errors[p.label]} (log: {p.run_dir / LOG})" if errors[p.label] else "")
                       for p in submit]
