"""A one-node SLURM for the tests: ``sbatch``, ``srun``, ``sacct``, ``scontrol requeue`` and ``scancel``, as far as
submitit's SlurmExecutor and vitreduce use them, running every job as local processes.

Each command is a small script in this folder that runs ``fake_slurm.py COMMAND ARGS``. State lives in
$FAKE_SLURM_DIR: one JSON record per job (an array task is a job), the job's copied script, and the pids
of every process started (the tests end them). What it emulates:

- sbatch reads ``#SBATCH`` lines up to the first command line (later ones are ignored, as sbatch does),
  submits a job array for ``--array=0-N%P``, prints "Submitted batch job ID", and starts each job at once
  (a free cluster) with SLURM's environment: SLURM_JOB_ID, SLURM_ARRAY_JOB_ID/_TASK_ID, SLURM_NTASKS,
  SLURM_JOB_NUM_NODES, SLURM_JOB_NODELIST, SLURM_CPUS_PER_TASK, SLURM_RESTART_COUNT (after a requeue),
  the submitting environment included (sbatch's --export=ALL); stdout/stderr go to --output/--error.
- srun starts SLURM_NTASKS tasks with SLURM_PROCID/SLURM_LOCALID/SLURM_NODEID, each bound to
  ``--cpus-per-task`` CPUs given to srun itself (1 without it: Slurm 22.05-23.02 do not pass sbatch's on).
- sacct -j ID prints JobID|State|NodeList for every job of an array (PENDING, RUNNING, REQUEUED,
  PREEMPTED, COMPLETED, FAILED, CANCELLED).
- scontrol requeue ID: the job is put back in the queue and runs again (SIGTERM to its tasks, as SLURM
  ends the running job first), with SLURM_RESTART_COUNT one more.
- scancel ID: cancelled (SIGTERM to its tasks); scancel --signal=SIG ID: SIG to its tasks only.
- While $FAKE_SLURM_DIR/hold exists, jobs wait in the queue (PENDING).
- ``fake_slurm.py preempt ID`` (no SLURM command): a preemption with PreemptMode=REQUEUE, SIGTERM to the
  tasks; the job is requeued when it was submitted with --requeue, else it ends PREEMPTED.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ.get("FAKE_SLURM_DIR", "/nonexistent"))
HERE = Path(__file__).resolve().parent


@contextlib.contextmanager
def locked():
    with open(STATE / "lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def record_path(job: str) -> Path:
    return STATE / "jobs" / f"{job}.json"


def read(job: str) -> dict:
    return json.loads(record_path(job).read_text())


def update(job: str, **changes) -> dict:
    with locked():
        record = {**read(job), **changes}
        tmp = record_path(job).with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(record_path(job))
    return record


def note_pid(pid: int) -> None:
    with locked(), open(STATE / "pids", "a") as handle:
        handle.write(f"{pid}\n")


def find(job_id: str) -> list[str]:
    """The jobs an id names: an array task (A_i), a raw job id, or every task of array A."""
    found = []
    for path in sorted((STATE / "jobs").glob("*.json")):
        record = json.loads(path.read_text())
        if job_id in (record["name"], record["raw_id"]) or (job_id == record["array_id"] and record["array"]):
            found.append(record["name"])
    return found


def sbatch_options(script: str) -> dict[str, str | bool]:
    """The #SBATCH options before the first command line (sbatch stops reading there)."""
    options: dict[str, str | bool] = {}
    for line in script.splitlines()[1:]:
        if line.startswith("#SBATCH"):
            for item in shlex.split(line[len("#SBATCH"):]):
                key, eq, value = item.lstrip("-").partition("=")
                options[key] = value if eq else True
        elif line.strip() and not line.startswith("#"):
            break
    return options


def sbatch(args: list[str]) -> int:
    script_path = Path(args[-1])
    script = script_path.read_text()
    options = sbatch_options(script)
    with locked():
        counter = STATE / "next_id"
        first = int(counter.read_text()) if counter.exists() else int(os.environ.get("FAKE_SLURM_FIRST_ID", "100"))
        array = re.fullmatch(r"0-(\d+)(%\d+)?", str(options.get("array", "")))
        count = int(array.group(1)) + 1 if array else 1
        counter.write_text(str(first + count + 1))
    (STATE / "jobs").mkdir(exist_ok=True)
    (STATE / "scripts").mkdir(exist_ok=True)
    copy = STATE / "scripts" / f"{first}.sh"
    copy.write_text(script)
    env = dict(os.environ)
    for index in range(count):
        name = f"{first}_{index}" if array else str(first)
        record = {"name": name, "raw_id": str(first + 1 + index if array else first), "array_id": str(first),
                  "array": bool(array), "index": index, "options": options, "script": str(copy),
                  "submit_dir": os.getcwd(), "env": env, "state": "PENDING", "restarts": 0, "requeue": False,
                  "tasks": [], "batch_pid": None, "srun_args": []}
        record_path(name).write_text(json.dumps(record))
        runner = subprocess.Popen([sys.executable, str(HERE / "fake_slurm.py"), "_run", name], env=env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=open(STATE / f"runner-{name}.log", "a"), start_new_session=True)  # noqa: SIM115
        note_pid(runner.pid)
    print(f"Submitted batch job {first}")
    return 0


def expand(pattern: str, record: dict, task: int = 0) -> str:
    array_id, index = record["array_id"], str(record["index"])
    return (pattern.replace("%A", array_id).replace("%a", index).replace("%j", record["raw_id"])
            .replace("%t", str(task)))


def job_env(record: dict) -> dict[str, str]:
    options = record["options"]
    nodes, per_node = int(options.get("nodes", 1)), int(options.get("ntasks-per-node", 1))
    env = {**record["env"], "SLURM_JOB_ID": record["raw_id"], "SLURM_JOBID": record["raw_id"],
           "SLURM_JOB_NAME": str(options.get("job-name", "")), "SLURM_JOB_NUM_NODES": str(nodes),
           "SLURM_NNODES": str(nodes), "SLURM_JOB_NODELIST": "localhost", "SLURM_NTASKS": str(nodes * per_node),
           "SLURM_NTASKS_PER_NODE": str(per_node), "SLURM_CPUS_PER_TASK": str(options.get("cpus-per-task", 1)),
           "SLURM_SUBMIT_DIR": record["submit_dir"], "FAKE_SLURM_JOB": record["name"]}
    if record["array"]:
        env |= {"SLURM_ARRAY_JOB_ID": record["array_id"], "SLURM_ARRAY_TASK_ID": str(record["index"])}
    if record["restarts"]:
        env["SLURM_RESTART_COUNT"] = str(record["restarts"])
    return env


def run(name: str) -> int:
    """One job from start to its final state, run again after each requeue."""
    while True:
        while (STATE / "hold").exists():  # the test holds the queue: the job stays PENDING
            time.sleep(0.05)
        record = update(name, state="RUNNING", requeue=False, tasks=[])
        options = record["options"]
        out = open(expand(str(options["output"]), record), "a")  # noqa: SIM115
        err = open(expand(str(options.get("error", options["output"])), record), "a")  # noqa: SIM115
        batch = subprocess.Popen(["bash", record["script"]], env=job_env(record), cwd=record["submit_dir"],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        note_pid(batch.pid)
        update(name, batch_pid=batch.pid)
        code = batch.wait()
        record = read(name)
        if record["requeue"]:
            update(name, state="PENDING", restarts=record["restarts"] + 1)
            continue
        kept = record["state"] in ("CANCELLED", "PREEMPTED")  # ended by scancel, or preempted without --requeue
        update(name, state=record["state"] if kept else "COMPLETED" if code == 0 else "FAILED", exit_code=code)
        return 0


def srun(args: list[str]) -> int:
    name = os.environ["FAKE_SLURM_JOB"]
    record = read(name)
    paths, cpus, rest = {"output": None, "error": None}, 1, list(args)
    while rest and rest[0].startswith("-"):
        item = rest.pop(0)
        key, eq, value = item.lstrip("-").partition("=")
        if key in ("output", "error", "cpus-per-task"):
            value = value if eq else rest.pop(0)
            if key == "cpus-per-task":
                cpus = int(value)
            else:
                paths[key] = value
    update(name, srun_args=list(args[:len(args) - len(rest)]))
    ntasks = int(os.environ["SLURM_NTASKS"])
    cores = sorted(os.sched_getaffinity(0))
    procs = []
    for task in range(ntasks):
        env = {**os.environ, "SLURM_PROCID": str(task), "SLURM_LOCALID": str(task), "SLURM_NODEID": "0",
               "SLURM_STEP_ID": "0", "SLURM_CPUS_PER_TASK": str(cpus)}
        mine = {cores[(task * cpus + k) % len(cores)] for k in range(cpus)}
        out = open(expand(paths["output"], record, task), "a")  # noqa: SIM115
        err = open(expand(paths["error"] or paths["output"], record, task), "a")  # noqa: SIM115
        procs.append(subprocess.Popen(rest, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                      preexec_fn=lambda mine=mine: os.sched_setaffinity(0, mine)))
        note_pid(procs[-1].pid)
    update(name, tasks=[p.pid for p in procs])
    codes = [p.wait() for p in procs]
    bad = [c if c > 0 else 128 - c for c in codes if c != 0]
    return bad[0] if bad else 0


def send(name: str, signum: int, batch: bool = False) -> None:
    record = read(name)
    for pid in record["tasks"] + ([record["batch_pid"]] if batch and record["batch_pid"] else []):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def scontrol(args: list[str]) -> int:
    if args[:1] != ["requeue"] or len(args) != 2:
        print(f"scontrol: fake supports `scontrol requeue ID` only, got {args}", file=sys.stderr)
        return 1
    for name in find(args[1]):
        update(name, requeue=True, state="REQUEUED")
        send(name, signal.SIGTERM)
    return 0


def scancel(args: list[str]) -> int:
    signame, ids, rest = None, [], list(args)
    while rest:
        item = rest.pop(0)
        if item.startswith("--signal"):
            signame = item.partition("=")[2] or rest.pop(0)
        else:
            ids.append(item)
    for name in (n for job_id in ids for n in find(job_id)):
        if signame:
            send(name, getattr(signal, signame if signame.startswith("SIG") else f"SIG{signame}"))
        else:
            update(name, state="CANCELLED")
            send(name, signal.SIGTERM, batch=True)
    return 0


def preempt(args: list[str]) -> int:
    for name in find(args[0]):
        record = read(name)
        update(name, state="PREEMPTED", requeue=bool(record["options"].get("requeue")))
        send(name, signal.SIGTERM)
    return 0


def sacct(args: list[str]) -> int:
    ids = [args[i + 1] for i, item in enumerate(args) if item == "-j"]
    print("JobID|State|NodeList")
    for name in (n for job_id in ids for n in find(job_id)):
        print(f"{name}|{read(name)['state']}|localhost")
    return 0


COMMANDS = {"sbatch": sbatch, "srun": srun, "sacct": sacct, "scontrol": scontrol, "scancel": scancel,
            "preempt": preempt, "_run": lambda args: run(args[0])}

if __name__ == "__main__":
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
