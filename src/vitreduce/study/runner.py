"""Studies: variants x seeds of one training recipe, each run in its own run directory, then the report.

``run_study`` expands a spec (vitreduce.study.spec) into ``STUDY_DIR/runs/<variant>/seed<S>/`` run
directories, validates every run's config and checks every model and dataset before any run starts
(vitreduce.study.plan), skips finished runs, resumes interrupted ones (the trainer resumes exactly),
keeps two processes off the same run with a file lock (vitreduce.study.launch), trains several at once
with ``jobs > 1`` (vitreduce.study.pool), and ends with ``vitreduce.study.reporting.write_report``. A study
is just those run directories; ``study.yaml`` records the resolved spec, and a rerun with a spec that
would change any run is refused, naming what differs.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitreduce.console import Countdown
from vitreduce.device import busy_warning, check_threads, default_threads, torch_threads
from vitreduce.errors import VitreduceError
from vitreduce.study.analysis import AnalysisConfig
from vitreduce.study.launch import Outcome, OutcomeStatus, RunLauncher, to_stderr
from vitreduce.study.plan import (
    RunPlan,
    ensure_synth_data,
    expand,
    preflight,
    prepare_runs,
    prepare_study_dir,
    study_dir_of,
)
from vitreduce.study.pool import Task, run_pool
from vitreduce.study.spec import StudySpec, ThroughputOptions
from vitreduce.train import rundir

# What a dry run without --costs leaves out, said where it ends (and in `vitreduce study --help`).
NOT_CHECKED = ("not checked in this dry run (it imports no torch): timm model names, model shapes and sizes, "
               "optimizer names and augment policies; --dry-run --costs checks them and prints each variant's "
               "parameters and MACs (it imports torch), and the study checks them before any run starts")


@dataclass
class StudyResult:
    study_dir: Path
    outcomes: list[Outcome] = field(default_factory=list)
    report: Any = None  # vitreduce.report.write.ReportPaths, or None when no run has finished
    analysis_failed: dict[str, str] = field(default_factory=dict)  # run label -> why its analysis was refused

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == OutcomeStatus.FAILED]

    @property
    def exit_status(self) -> int:
        """The command's: 1 when a run or a run's analysis failed, else 0."""
        return 1 if self.failed or self.analysis_failed else 0


def run_study(spec: StudySpec, out: str | os.PathLike | None = None, jobs: int = 1, echo=to_stderr,
              dry_run: bool = False, threads: int | None = None, wait: bool = False, on_event=None,
              costs: bool = False) -> StudyResult:
    """Run (or resume, or just report) a study; a failing run is reported without stopping the others.

    Args:
        spec: the validated spec (``load_spec``).
        out: study directory (default: the spec's ``out``, else runs/studies/<name>).
        jobs: runs trained at once. 1: one after another in this process; N > 1: N worker processes.
        threads: torch threads per run process (``--threads``); default ``device.default_threads``: the
            available cores not busy with other work (or OMP_NUM_THREADS) divided between the ``jobs`` runs
            (under torchrun, ``nproc_per_node`` processes per run, threads divided between all of them).
        echo: where the study's progress lines go (default: stderr; the engine's own lines go to stderr).
        dry_run: check, write study.yaml and every run's config.yaml, print each unfinished run's command, train
            nothing; without ``costs`` it imports no torch and leaves out the checks that need timm (NOT_CHECKED).
        costs: with ``dry_run``: those checks too, and each variant's parameters and MACs (imports torch).
        wait: with ``launcher: slurm``, wait for the jobs, then write the report (else submit and return; the
            report is written then only when every run has finished).
        on_event: fault injection for tests, handed to each SLURM job's training (``train.loop.EventHook``).
    """
    _check_jobs(spec, jobs)
    check_threads(threads)
    study_dir = study_dir_of(spec, out)
    if dry_run and costs:
        echo("--costs: importing torch to check every model and count its parameters and MACs")
    plans = expand(spec, study_dir, timm=not dry_run or costs)  # a dry run without costs imports no torch
    notes = preflight(spec, plans, data_here=not dry_run, models=not dry_run or costs)
    if spec.launcher == "slurm" and not dry_run:
        _check_cluster(spec, study_dir)  # before anything is written
    _note_replaced(study_dir, prepare_study_dir(study_dir, spec), echo)
    ensure_synth_data(plans)
    starts = prepare_runs(plans)
    todo = [(i, p, starts[p.label]) for i, p in enumerate(plans, 1) if starts[p.label] != rundir.RunStatus.DONE]
    jobs = min(jobs, max(len(todo), 1))
    threads = threads or default_threads(jobs * spec.nproc_per_node)
    resume = sum(status == rundir.RunStatus.RESUME for *_, status in todo)
    echo(f"study {spec.name}: {len(spec.variants)} variant(s) x {len(spec.seeds)} seed(s) = {len(plans)} runs in "
         f"{study_dir}; {len(plans) - len(todo)} finished, {resume} to resume, {len(todo) - resume} to train"
         + (f"; {jobs} at a time, {threads} thread(s) each" if jobs > 1 else f"; {threads} thread(s)"))
    if not dry_run and spec.launcher != "slurm" and (warning := busy_warning(threads * jobs * spec.nproc_per_node)):
        echo(warning)
    result = StudyResult(study_dir)
    nproc = max(spec.slurm.gpus_per_node, 1) if spec.launcher == "slurm" else spec.nproc_per_node  # the dry run's
    launcher = RunLauncher(spec.launcher, nproc, threads, len(plans))  # torchrun command: the ranks of one job
    if dry_run:
        _print_dry_run(launcher, plans, todo, notes, echo, costs)
        if spec.launcher == "slurm":
            _print_job_script(spec, study_dir, len(todo), echo)
        return result
    for index, plan in enumerate(plans, 1):
        if starts[plan.label] == rundir.RunStatus.DONE:
            echo(f"[{index}/{len(plans)}] {plan.label}: finished before (done.json), skipped")
            result.outcomes.append(Outcome(plan, OutcomeStatus.SKIPPED))
    slurm = spec.launcher == "slurm"
    result.outcomes += (_submit(spec, study_dir, todo, echo, wait, on_event) if slurm
                        else _train(launcher, todo, jobs, echo))
    _summarise(result, echo)
    if not slurm or wait or not todo:  # submitted without --wait: the report once every run has finished
        _after_training(spec, plans, result, threads, echo)
    return result


def _note_replaced(study_dir: Path, replaced: list[str], echo) -> None:
    if replaced:
        echo(f"{study_dir}: no run had started, so this spec replaces the one it held:\n  " + "\n  ".join(replaced))


def _print_dry_run(launcher: RunLauncher, plans: list[RunPlan], todo: list[Task], notes: list[str], echo,
                   costs: bool) -> None:
    """What the study would train: each variant (with ``costs``: its parameters and MACs), then each unfinished
    run's command."""
    from vitreduce.console import text_table
    from vitreduce.study.sweep import variant_costs

    echo(text_table(*variant_costs(plans, costs), numbers_right=True))
    if not costs:
        echo(NOT_CHECKED)
    for note in notes:
        echo(note)
    for index, plan, status in todo:
        echo(f"[{index}/{len(plans)}] {plan.label} ({status}): {' '.join(launcher.command(plan, display=True))}")


def _print_job_script(spec: StudySpec, study_dir: Path, runs: int, echo) -> None:
    """The script submitit will submit for the unfinished runs, whole (from submitit's own writer)."""
    from vitreduce.study.slurm import job_script

    if not runs:
        return
    tasks = max(spec.slurm.gpus_per_node, 1)
    echo(f"launcher slurm: each run above is one {'job of an array' if runs > 1 else 'job'}, {tasks} task(s) per "
         f"node as the ranks of one run (torchrun's command is the same training by hand); the job script:")
    for line in job_script(spec.slurm, spec.name, study_dir, runs).splitlines():
        echo(f"  {line}")


def _check_cluster(spec: StudySpec, study_dir: Path) -> None:
    from vitreduce.study.slurm import check_cluster  # imports submitit: only for SLURM studies

    check_cluster(study_dir, spec.slurm.nodes)


def _check_jobs(spec: StudySpec, jobs: int) -> None:
    if jobs < 1:
        raise VitreduceError(f"--jobs {jobs}: use 1 or more")
    if jobs > 1 and spec.launcher == "torchrun":
        raise VitreduceError("--jobs > 1 with launcher: torchrun would put every run on the same GPUs; run them one "
                             "at a time, or start one `vitreduce study` per machine on a shared study directory "
                             "(each run is locked while it trains)")


def _train(launcher: RunLauncher, todo: list[Task], jobs: int, echo) -> list[Outcome]:
    """Train the unfinished runs: one after another in this process, or on ``jobs`` worker processes; the
    study's ETA after each run."""
    countdown = Countdown(len(todo), "run", parallel=jobs)

    def finished(outcome: Outcome) -> None:
        timed = outcome.status in (OutcomeStatus.TRAINED, OutcomeStatus.FAILED) and outcome.wall_s > 0
        echo(f"study: {countdown.tick(outcome.wall_s if timed else None)}")

    if jobs > 1:
        return run_pool(launcher, todo, jobs, echo, on_outcome=finished)
    outcomes = []
    with torch_threads(launcher.threads):
        for index, plan, status in todo:
            outcomes.append(launcher.run(plan, index, status, echo))
            finished(outcomes[-1])
    return outcomes


def _submit(spec: StudySpec, study_dir: Path, todo: list[Task], echo, wait: bool, on_event) -> list[Outcome]:
    """The unfinished runs as SLURM jobs (vitreduce.study.slurm); with ``wait``, until they end."""
    from vitreduce.study.slurm import submit_study

    outcomes = submit_study(spec.slurm, spec.name, study_dir, [p for _, p, _ in todo], echo, wait, on_event)
    if not wait:
        echo(f"study: follow the jobs with `vitreduce study status {study_dir}`; when they are done, "
             f"`vitreduce report {study_dir}` writes the report (or rerun with --wait)")
    return outcomes


def _summarise(result: StudyResult, echo) -> None:
    counts = {s: sum(o.status == s for o in result.outcomes) for s in OutcomeStatus}
    echo(f"study {result.study_dir}: {counts[OutcomeStatus.TRAINED]} trained, {counts[OutcomeStatus.SKIPPED]} "
         f"finished before, {counts[OutcomeStatus.LOCKED]} left to another process, "
         f"{counts[OutcomeStatus.FAILED]} failed" + (f", {counts[OutcomeStatus.SUBMITTED]} submitted to SLURM"
                                                    if counts[OutcomeStatus.SUBMITTED] else ""))
    for o in result.outcomes:
        if o.status in (OutcomeStatus.FAILED, OutcomeStatus.LOCKED):
            echo(f"  {o.plan.label}: {o.status}: {o.message}")


def _after_training(spec: StudySpec, plans: list[RunPlan], result: StudyResult, threads: int, echo) -> None:
    """Throughput, analysis and the report, each over the runs that have finished."""
    finished = [(p.run_dir / rundir.DONE).is_file() for p in plans]
    if spec.profiling and all(finished):
        _throughput(spec.profiling, plans, result.study_dir, echo)  # not while runs fail or train elsewhere
    if spec.analysis is not None:
        result.analysis_failed = _analyse(spec.analysis, plans, echo, threads)
    if any(finished):
        from vitreduce.study.reporting import write_report

        result.report = write_report(result.study_dir)


def _analyse(config: AnalysisConfig, plans: list[RunPlan], echo, threads: int) -> dict[str, str]:
    """Sharpness and landscape of every finished run; results with the same options are reused. A run whose
    analysis is refused (its class folders are no longer the classes its model was trained on, a model file
    missing) is reported and left out, the others measured; returns {run label: why} of those.

    Runs with the training runs' thread count: on a busy machine more torch threads than free cores
    made a tiny model's Hessian-vector products 3x slower (7 s with 1 thread, 20 s with 2, measured).
    """
    import time

    from vitreduce.study.analysis import analyze_run

    finished = [plan for plan in plans if (plan.run_dir / rundir.DONE).is_file()]
    countdown = Countdown(len(finished), "run")
    failed: dict[str, str] = {}
    with torch_threads(threads):
        for index, plan in enumerate(finished, 1):
            tag = f"analysis [{index}/{len(finished)}] {plan.label}"
            start = time.perf_counter()
            try:
                written = analyze_run(plan.run_dir, config, log=lambda line, tag=tag: echo(f"{tag}: {line}"))
            except VitreduceError as err:
                failed[plan.label] = str(err)
                echo(f"{tag}: failed: {err}")
                echo(f"analysis: {countdown.tick(None)}")
                continue
            # Reused results take no time: only measured runs make the mean the ETA is built on.
            seconds = time.perf_counter() - start if written else None
            echo(f"analysis: {countdown.tick(seconds)}" + ("" if written else f" ({plan.label}: results reused)"))
    if failed:
        echo(f"analysis: {len(failed)} of {len(finished)} run(s) failed (the reasons above): {', '.join(failed)}")
    return failed


def _throughput(options: ThroughputOptions, plans: list[RunPlan], study_dir: Path, echo) -> None:
    """throughput.json via vitreduce.efficiency.profiler, once (delete the file to measure again).

    Only once every run has finished: runs training meanwhile (or failing) would distort the timings. Each
    base model's variants are timed together, interleaved; the entries of all base models go into one file,
    each naming its ``base_model`` (the report compares a variant only with its own base model's baseline).
    """
    path = study_dir / "throughput.json"
    if path.is_file():
        echo(f"throughput: {path} exists (delete it to measure again)")
        return
    from vitreduce.efficiency.profiler import throughput_records
    from vitreduce.files import write_json

    groups = _base_models(plans)
    records: dict[str, dict] = {}
    for index, (base_model, (name, kwargs), variants) in enumerate(groups, 1):
        echo(f"throughput: profiling {len(variants)} variant(s) of {base_model} ({index}/{len(groups)}) for {path}")
        kwargs = dict(kwargs)  # img_size and num_classes are the profiler's own arguments
        records |= throughput_records(variants, name, base_model=base_model, img_size=kwargs.pop("img_size", None),
                                      num_classes=kwargs.pop("num_classes"), model_kwargs=kwargs,
                                      **options.model_dump())
    write_json(path, records)  # once every base model is measured: a failure leaves no partial file


def _base_models(plans: list[RunPlan]) -> list[tuple[str, tuple[str, dict], dict[str, str]]]:
    """(base model, (timm name, profiling kwargs), {variant: reduction}) per distinct architecture profiled.

    Variants differing only in what does not change speed (drop rates, weight init) share a base model. Its
    name is the timm name, with the settings that tell apart base models sharing one (``embed_dim=48``).
    """
    groups: dict[str, tuple[tuple[str, dict], dict[str, str]]] = {}
    for plan in plans:
        model = plan.config.model
        kwargs = {k: v for k, v in model.timm_kwargs().items() if k not in ("drop_rate", "drop_path_rate",
                                                                            "weight_init")}
        key = json.dumps([model.name, kwargs], sort_keys=True, default=str)
        groups.setdefault(key, ((model.name, kwargs), {}))[1][plan.variant] = model.reduction
    named = []
    for (name, kwargs), variants in groups.values():
        same = [k for (n, k), _ in groups.values() if n == name]
        differ = sorted(key for key in {*kwargs, *(k for o in same for k in o)}
                        if any(o.get(key) != kwargs.get(key) for o in same))
        named.append((name + (f" ({', '.join(f'{k}={kwargs.get(k)}' for k in differ)})" if differ else ""),
                      (name, kwargs), variants))
    return named


def print_results(result: StudyResult, note: str = "") -> None:
    """The results table and the report's path on stdout (what `vitreduce study` and `demo` end with)."""
    if result.report is None:
        finished = sum(o.status in (OutcomeStatus.SKIPPED, OutcomeStatus.TRAINED) for o in result.outcomes)
        print(f"no report yet: {finished} of {len(result.outcomes)} runs of {result.study_dir} finished, the others "
              f"are queued or training; `vitreduce report {result.study_dir}` writes it once they are done"
              if finished else f"no run of {result.study_dir} has finished yet: no report")
        return
    from vitreduce.report.write import format_results_table

    print(format_results_table(result.report.summary))
    if note:
        print(f"\n{note}")
    print(f"\nreport: {result.report.markdown} (and {result.report.html.name}, {result.report.summary_json.name}, "
          "figures/)")
