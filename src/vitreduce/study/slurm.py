"""A study on SLURM through submitit's SlurmExecutor: one job per run (a job array), requeued from its checkpoint.

``check_cluster`` checks the machine and the study directory (a shared filesystem when a run spans several
nodes) before the study writes anything; ``submit_runs`` then submits every run that is neither finished
nor already queued or running as one job array, and records the job ids in STUDY_DIR/slurm/jobs.json
(submitit's scripts and logs go to STUDY_DIR/slurm/<job id>/). ``job_script`` is the script submitit
writes, whole (the dry run prints it).

Each job runs vitreduce.study.slurm_job: every task is a rank of one DDP run (submitit's
TorchDistributedEnvironment sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, which
``train.distributed`` reads), with ``cpus_per_task`` torch threads (srun is given ``--cpus-per-task``:
Slurm 22.05-23.02 do not pass it from sbatch to srun). The job script has ``--requeue`` (a preempted
job comes back whatever the cluster's default) and ``--signal=USR2@signal_delay_s``: the run stops at the
first safe point with its state on disk and the job is requeued, at most ``max_requeues`` times.
"""
from __future__ import annotations

import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import submitit
from submitit.slurm.slurm import _make_sbatch_string  # the script writer SlurmExecutor uses (pinned version)

from vitreduce.errors import VitreduceError
from vitreduce.files import write_json
from vitreduce.study.launch import Outcome, OutcomeStatus
from vitreduce.study.plan import LOG, RunPlan
from vitreduce.study.slurm_job import JOBS, SLURM_DIR, RunJob
from vitreduce.study.spec import SlurmOptions
from vitreduce.study.status import RunState, read_jobs, study_status

# Filesystems every node of a cluster sees (/proc/mounts types); others are refused for nodes > 1.
SHARED_FS = ("nfs", "nfs4", "lustre", "gpfs", "beegfs", "cephfs", "ceph", "fuse.ceph", "glusterfs",
             "fuse.glusterfs", "panfs", "wekafs", "fuse.weka", "fuse.juicefs", "cifs", "smb3", "virtiofs")


def sbatch_parameters(options: SlurmOptions, name: str) -> dict[str, Any]:
    """The parameters of submitit's SlurmExecutor (sbatch's names) for ``options``: one task per GPU (one task
    on a CPU node), ``--requeue``, srun told the CPUs of each task."""
    params = dict(job_name=name, nodes=options.nodes, ntasks_per_node=max(options.gpus_per_node, 1),
                  gpus_per_node=options.gpus_per_node or None, cpus_per_task=options.cpus_per_task,
                  mem=f"{options.mem_gb}GB", time=options.timeout_min, signal_delay_s=options.signal_delay_s,
                  partition=options.partition, account=options.account, qos=options.qos,
                  constraint=options.constraint, additional_parameters={"requeue": True, **options.additional},
                  setup=list(options.setup) or None, array_parallelism=options.array_parallelism,
                  srun_args=[f"--cpus-per-task={options.cpus_per_task}"])
    return {key: value for key, value in params.items() if value is not None}


def job_command(folder: Path | str, python: str | None = None) -> str:
    """The command each task of a job runs (after srun): this module's entry, which notes stop signals before
    anything heavy is imported, then runs submitit's job in ``folder``."""
    python = python or shlex.quote(sys.executable)
    return f"{python} -u -m vitreduce.study.slurm_job {shlex.quote(str(folder))}"


def job_script(options: SlurmOptions, name: str, study_dir: Path, runs: int) -> str:
    """The script submitit submits for ``runs`` runs (a job array when more than one), whole."""
    folder = (study_dir / SLURM_DIR / "%j").absolute()
    array = {"map_count": runs} if runs > 1 else {}
    return _make_sbatch_string(command=job_command(folder), folder=str(folder), **array,
                               **sbatch_parameters(options, name))


class _Executor(submitit.SlurmExecutor):
    """submitit's SlurmExecutor, each task started through vitreduce.study.slurm_job (signals first)."""

    @property
    def _submitit_command_str(self) -> str:
        return job_command(self.folder, self.python)


def make_executor(options: SlurmOptions, folder: Path, name: str) -> submitit.Executor:
    """submitit's SLURM executor for the jobs of a study (requeues are counted by vitreduce.study.slurm_job)."""
    executor = _Executor(folder, max_num_timeout=options.max_requeues)
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


def submit_runs(plans: list[RunPlan], options: SlurmOptions, study_dir: Path, name: str, echo,
                on_event=None) -> list[Any]:
    """Submit ``plans`` (the runs to train) as one job array; their submitit jobs, ids recorded in jobs.json.

    Args:
        on_event: fault injection for tests, handed to every ``RunJob``.
    """
    folder = study_dir / SLURM_DIR
    executor = make_executor(options, folder / "%j", name)
    with executor.batch():
        jobs = [executor.submit(RunJob(str(plan.run_dir), options.max_requeues, options.cpus_per_task, on_event))
                for plan in plans]
    recorded = read_jobs(study_dir)
    for plan, job in zip(plans, jobs, strict=True):
        recorded[plan.label] = {"job_id": str(job.job_id), "submitted": time.time(), "cluster": "slurm"}
        echo(f"{plan.label}: submitted as job {job.job_id} (log: {plan.run_dir / LOG})")
    write_json(folder / JOBS, recorded)
    return jobs


def wait_for(jobs: list[Any], plans: list[RunPlan], study_dir: Path, echo) -> dict[str, str]:
    """Wait for every job (all its tasks) to end; each run's error with its log ('' when it finished), as
    `vitreduce study status` tells it."""
    for job in jobs:
        job.wait()  # every task's result file, or SLURM's final state; a requeued job is waited for again
    lines = {line.label: line for line in study_status(study_dir)}
    errors = {}
    for plan, job in zip(plans, jobs, strict=True):
        line = lines[plan.label]
        why = (line.tail[0] if line.tail else f"ended {line.state.value}, without done.json")
        errors[plan.label] = "" if line.state is RunState.DONE else f"{why} (log: {line.log})"
        echo(f"{plan.label}: job {job.job_id} " + (f"FAILED: {errors[plan.label]}" if errors[plan.label] else "done"))
    return errors


def submit_study(options: SlurmOptions, name: str, study_dir: Path, todo: list[RunPlan], echo, wait: bool = False,
                 on_event=None) -> list[Outcome]:
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
    jobs = submit_runs(submit, options, study_dir, name, echo, on_event)
    if not wait:
        return outcomes + [Outcome(p, OutcomeStatus.SUBMITTED, f"job {job.job_id}")
                           for p, job in zip(submit, jobs, strict=True)]
    errors = wait_for(jobs, submit, study_dir, echo)
    return outcomes + [Outcome(p, OutcomeStatus.FAILED if errors[p.label] else OutcomeStatus.TRAINED, errors[p.label])
                       for p in submit]
