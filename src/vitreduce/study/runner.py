"""Studies: variants x seeds of one training recipe, each run in its own run directory, then the report.

A study spec (YAML, docs/studies.md) names a base train config, overrides for every run, the variants
(each a set of overrides, usually ``model.reduction``) and the seeds. ``run_study`` expands it into
``STUDY_DIR/runs/<variant>/seed<S>/`` run directories, validates every run's config and checks every
model and dataset before any run starts, skips finished runs, resumes interrupted ones (the trainer
resumes exactly), keeps two processes off the same run with a file lock, and ends with
``vitreduce.study.report.write_report``. A study is just those run directories; ``study.yaml`` records the
resolved spec, and a rerun with a spec that would change any run is refused, naming what differs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitreduce.errors import VitreduceError
from vitreduce.study.analysis import AnalysisConfig
from vitreduce.study.spec import (
    LOCK,
    LOG,
    RunPlan,
    StudySpec,
    ensure_synth_data,
    expand,
    preflight,
    prepare_runs,
    prepare_study_dir,
    study_dir_of,
)
from vitreduce.train import rundir


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------
# Running


@dataclass
class Outcome:
    """What became of one run in this invocation."""

    plan: RunPlan
    status: str  # "skipped" (finished before), "trained", "locked" (another process has it), "failed"
    message: str = ""
    wall_s: float = 0.0


@dataclass
class StudyResult:
    study_dir: Path
    outcomes: list[Outcome] = field(default_factory=list)
    report: Any = None  # vitreduce.study.report.ReportPaths, or None when no run has finished

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]


class RunLock:
    """An exclusive, non-blocking flock on RUN_DIR/.lock, held while the run trains.

    The lock belongs to the open file, so a torchrun child given the descriptor keeps it held even if
    the study process dies first; the kernel releases it when the last holder exits.
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK
        self.handle = None

    def acquire(self) -> bool:
        handle = open(self.path, "a+")  # noqa: SIM115 (held open for the run's lifetime)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.handle = handle
        return True

    def holder(self) -> str:
        with contextlib.suppress(OSError):
            return self.path.read_text().strip() or "?"
        return "?"

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the last descriptor releases the flock
            self.handle = None


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_study(spec: StudySpec, out: str | os.PathLike | None = None, jobs: int = 1, echo=_stderr,
              dry_run: bool = False) -> StudyResult:
    """Run (or resume, or just report) a study; a failing run is reported without stopping the others.

    Args:
        spec: the validated spec (``load_spec``).
        out: study directory (default: the spec's ``out``, else runs/studies/<name>).
        jobs: runs trained at once. 1: one after another in this process; N > 1: N worker processes
            with ``max(1, cores // N)`` threads each (under torchrun, ``nproc_per_node`` processes per run,
            threads divided between all of them).
        echo: where the study's progress lines go (default: stderr; the engine's own lines go to stderr).
        dry_run: check everything, write study.yaml and every run's config.yaml, print each unfinished
            run's command (to launch by hand or submit to a cluster), train nothing.
    """
    if jobs < 1:
        raise VitreduceError(f"--jobs {jobs}: use 1 or more")
    if jobs > 1 and spec.launcher == "torchrun":
        raise VitreduceError("--jobs > 1 with launcher: torchrun would put every run on the same GPUs; run them one "
                             "at a time, or start one `vitreduce study` per machine on a shared study directory "
                             "(each run is locked while it trains)")
    study_dir = study_dir_of(spec, out)
    plans = expand(spec, study_dir)
    preflight(spec, plans)
    prepare_study_dir(study_dir, spec)
    ensure_synth_data(plans)
    starts = prepare_runs(plans)
    todo = [(i, p, starts[p.label]) for i, p in enumerate(plans, 1) if starts[p.label] != "done"]
    jobs = min(jobs, max(len(todo), 1))
    threads = max(1, cpu_count() // (jobs * spec.nproc_per_node))
    resume = sum(status == "resume" for *_, status in todo)
    echo(f"study {spec.name}: {len(spec.variants)} variant(s) x {len(spec.seeds)} seed(s) = {len(plans)} runs in "
         f"{study_dir}; {len(plans) - len(todo)} finished, {resume} to resume, {len(todo) - resume} to train"
         + (f"; {jobs} at a time, {threads} thread(s) each" if jobs > 1 else ""))
    result = StudyResult(study_dir)
    runner = _Runner(spec.launcher, spec.nproc_per_node, threads, len(plans))
    if dry_run:
        for index, plan, status in todo:
            echo(f"[{index}/{len(plans)}] {plan.label} ({status}): {' '.join(runner.command(plan, display=True))}")
        return result
    for index, plan in enumerate(plans, 1):
        if starts[plan.label] == "done":
            echo(f"[{index}/{len(plans)}] {plan.label}: finished before (done.json), skipped")
            result.outcomes.append(Outcome(plan, "skipped"))
    if jobs == 1:
        result.outcomes += [runner.run(plan, index, status, echo) for index, plan, status in todo]
    else:
        result.outcomes += _run_pool(runner, todo, jobs, echo)
    _summarise(result, echo)
    if spec.throughput and all((p.run_dir / rundir.DONE).is_file() for p in plans):
        _throughput(spec, plans, study_dir, echo)  # not while runs fail or train elsewhere: timings would suffer
    if spec.analysis is not None:
        _analyse(spec.analysis, plans, echo, threads)
    if any((p.run_dir / rundir.DONE).is_file() for p in plans):
        from vitreduce.study.report import write_report

        result.report = write_report(study_dir)
    return result


@dataclass(frozen=True)
class _Runner:
    """Trains one run under its lock, its output also appended to RUN_DIR/train.log."""

    launcher: str
    nproc_per_node: int
    threads: int
    total: int
    prefix: bool = False  # prefix the run's lines with its label (runs side by side)

    def run(self, plan: RunPlan, index: int, status: str, echo) -> Outcome:
        tag = f"[{index}/{self.total}] {plan.label}"
        lock = RunLock(plan.run_dir)
        if not lock.acquire():
            message = f"being trained by another process (pid {lock.holder()}, {lock.path}); skipped here"
            echo(f"{tag}: {message}")
            return Outcome(plan, "locked", message)
        if (plan.run_dir / rundir.DONE).is_file():  # another process finished it since this study looked
            lock.release()
            echo(f"{tag}: finished by another process meanwhile, skipped")
            return Outcome(plan, "skipped")
        verb = "resuming" if status == "resume" else "training"
        echo(f"{tag}: {verb} in {plan.run_dir} (log: {plan.run_dir / LOG})")
        start = time.perf_counter()
        try:
            with open(plan.run_dir / LOG, "a") as log, _tee(log, f"  [{plan.label}] " if self.prefix else ""):
                error = self._train(plan, lock)
        finally:
            lock.release()
        wall = time.perf_counter() - start
        if error:
            echo(f"{tag}: FAILED: {error} (log: {plan.run_dir / LOG})")
            return Outcome(plan, "failed", f"{error} (log: {plan.run_dir / LOG})", wall)
        final = json.loads((plan.run_dir / rundir.DONE).read_text()).get("final") or {}
        scores = ", ".join(f"{kind} top-1 {final[kind]['top1']:.2f}" for kind in ("ema", "raw") if final.get(kind))
        echo(f"{tag}: done in {wall:.{0 if wall >= 10 else 1}f} s ({scores})")
        return Outcome(plan, "trained", wall_s=wall)

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
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "PYTHONUNBUFFERED": "1"}
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


class _Tee:
    """A text stream that also appends complete lines to a log (a progress bar's \\r redraws: last state only).

    With a prefix, the terminal gets whole lines, each prefixed (several runs share one terminal).
    """

    def __init__(self, stream, log, prefix: str = ""):
        self.stream, self.log, self.prefix, self.partial = stream, log, prefix, ""

    def write(self, text: str) -> int:
        if not self.prefix:
            self.stream.write(text)
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            line = line.rsplit("\r", 1)[-1]
            self.log.write(line + "\n")
            if self.prefix:
                self.stream.write(f"{self.prefix}{line}\n")
        self.log.flush()
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


@contextlib.contextmanager
def _tee(log, prefix: str = ""):
    with contextlib.redirect_stdout(_Tee(sys.stdout, log, prefix)), \
            contextlib.redirect_stderr(_Tee(sys.stderr, log, prefix)):
        yield


# Worker processes: each imports torch once and trains runs one after another (a process per run would
# pay the import, several seconds, for every run).


def _work(conn, runner: _Runner) -> None:
    import torch

    torch.set_num_threads(runner.threads)
    try:
        while (task := conn.recv()) is not None:
            plan, index, status = task
            conn.send(runner.run(plan, index, status, _stderr))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass  # Ctrl-C reaches the study process too, which reports it; EOF: the study process is gone


def _run_pool(runner: _Runner, todo: list[tuple[int, RunPlan, str]], jobs: int, echo) -> list[Outcome]:
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("spawn")
    runner = dataclasses.replace(runner, prefix=True)

    def start():
        parent, child = ctx.Pipe()
        saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        os.environ.update(OMP_NUM_THREADS=str(runner.threads), MKL_NUM_THREADS=str(runner.threads))
        try:  # the environment is read when the worker starts, before torch is imported
            proc = ctx.Process(target=_work, args=(child, runner), daemon=True)
            proc.start()
        finally:
            for key, value in saved.items():
                os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
        child.close()
        return {"conn": parent, "proc": proc, "task": None}

    workers, pending, outcomes = [start() for _ in range(jobs)], list(todo), []
    try:
        while pending or any(w["task"] for w in workers):
            for w in workers:
                if w["task"] is None and pending:
                    index, plan, status = w["task"] = pending.pop(0)
                    w["conn"].send((plan, index, status))
            busy = [w for w in workers if w["task"]]
            wait([w["conn"] for w in busy] + [w["proc"].sentinel for w in busy])
            for w in busy:
                try:
                    if w["conn"].poll():
                        outcomes.append(w["conn"].recv())
                        w["task"] = None
                        continue
                except EOFError:
                    pass
                if not w["proc"].is_alive():  # killed (out of memory, a signal): report it, replace the worker
                    index, plan, _ = w["task"]
                    message = f"its worker process died (exit code {w['proc'].exitcode}); see {plan.run_dir / LOG}"
                    echo(f"[{index}/{runner.total}] {plan.label}: FAILED: {message}")
                    outcomes.append(Outcome(plan, "failed", message))
                    workers[workers.index(w)] = start()
    finally:
        for w in workers:
            with contextlib.suppress(OSError, BrokenPipeError):
                w["conn"].send(None)
        for w in workers:
            w["proc"].join(timeout=5 if not (pending or any(x["task"] for x in workers)) else 0)
            if w["proc"].is_alive():
                w["proc"].terminate()
                w["proc"].join()
    return outcomes


def _summarise(result: StudyResult, echo) -> None:
    counts = {s: sum(o.status == s for o in result.outcomes) for s in ("trained", "skipped", "locked", "failed")}
    echo(f"study {result.study_dir}: {counts['trained']} trained, {counts['skipped']} finished before, "
         f"{counts['locked']} left to another process, {counts['failed']} failed")
    for o in result.outcomes:
        if o.status in ("failed", "locked"):
            echo(f"  {o.plan.label}: {o.status}: {o.message}")


def _analyse(config: AnalysisConfig, plans: list[RunPlan], echo, threads: int) -> None:
    """Sharpness and landscape of every finished run; results with the same options are reused.

    Runs with the training runs' thread count: on a busy machine more torch threads than free cores
    made a tiny model's Hessian-vector products 3x slower (7 s with 1 thread, 20 s with 2, measured).
    """
    import torch

    from vitreduce.study.analysis import analyze_run

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for plan in plans:
            if (plan.run_dir / rundir.DONE).is_file():
                analyze_run(plan.run_dir, config, log=echo)
    finally:
        torch.set_num_threads(previous)


def _throughput(spec: StudySpec, plans: list[RunPlan], study_dir: Path, echo) -> None:
    """throughput.json via vitreduce.efficiency.profiler, once (delete the file to measure again)."""
    path = study_dir / "throughput.json"
    if path.is_file():
        echo(f"throughput: {path} exists (delete it to measure again)")
        return
    from vitreduce.efficiency.profiler import write_throughput_json

    model = plans[0].config.model
    kwargs = {k: v for k, v in model.timm_kwargs().items() if k not in ("num_classes", "img_size", "drop_rate",
                                                                        "drop_path_rate", "weight_init")}
    options = spec.throughput if isinstance(spec.throughput, dict) else {}
    echo(f"throughput: profiling {len(spec.variants)} variant(s) of {model.name} for {path}")
    reductions = {p.variant: p.config.model.reduction for p in plans}
    write_throughput_json(study_dir, reductions, model.name, img_size=model.img_size, num_classes=model.num_classes,
                          model_kwargs=kwargs, **options)


def print_results(result: StudyResult, note: str = "") -> None:
    """The results table and the report's path on stdout (what `vitreduce study` and `demo` end with)."""
    if result.report is None:
        print(f"no run of {result.study_dir} has finished yet: no report")
        return
    from vitreduce.study.report import format_results_table

    print(format_results_table(result.report.summary))
    if note:
        print(f"\n{note}")
    print(f"\nreport: {result.report.markdown} (and {result.report.html.name}, {result.report.summary_json.name}, "
          "figures/)")
