"""Per-run and per-variant metrics: pure functions over run directories (docs/run-directory.md).

Every figure is defined in docs/metrics.md; this module is the one place that computes them.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vitreduce.config_tree import read_yaml
from vitreduce.errors import VitreduceError
from vitreduce.numbers import is_finite
from vitreduce.reduction.accounting import RECORD_FIELDS, upgrade_record
from vitreduce.report.analysis_files import read_run_analysis
from vitreduce.report.outcome import STATUSES, Outcome, Unreadable, check_ranges, classify, first_bad_step
from vitreduce.report.records import KindSummary, Outcomes, SharpnessSummary, Spread, VariantEntry
from vitreduce.report.spikes import (
    DEFAULT_SPIKE_THRESHOLD,
    DEFAULT_SPIKE_WINDOW,
    DEFAULT_STEP_SPIKE_WINDOW,
    DEFAULT_STEP_SPIKE_Z,
    find_loss_spikes,
    find_step_spikes,
)
from vitreduce.report.throughput import same_model_baseline, summarize_throughput, throughput_ratio
from vitreduce.sharpness.measures import per_parameter
from vitreduce.statistics.family import KIND_TITLE as KIND_TITLE  # re-exported for the report modules
from vitreduce.statistics.family import MODEL_KINDS, ModelKind
from vitreduce.train.logs import read_metrics, read_steps

# run.json fields that describe the model; every seed of a variant must agree on them.
ARCH_KEYS = (*RECORD_FIELDS, "num_classes", "epochs")
LabelsOf = Callable[[dict], dict[str, str]]  # study.yaml's tree -> {sweep variant: base model label}
_SEED_DIR = re.compile(r"seed(\d+)")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise VitreduceError(f"{path} is not valid JSON ({err}); rewrite or remove it") from err
    if not isinstance(data, dict):
        raise VitreduceError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


@dataclass(frozen=True)
class ModelMetrics:
    """Accuracy figures of one model (raw or EMA) of one run, over its evaluated epochs."""

    epochs: tuple[int, ...]  # evaluated epochs, ascending
    top1: tuple[float, ...]  # top-1 (%) at those epochs
    top1_final: float  # at the last evaluated epoch
    top5_final: float | None
    top1_peak: float  # maximum over the evaluated epochs
    peak_epoch: int  # earliest epoch reaching the peak
    final_epoch: int
    p2f: float  # peak-to-final degradation, top1_peak - top1_final (>= 0), percentage points


def model_metrics(records: Sequence[dict], kind: ModelKind) -> ModelMetrics | None:
    """Peak, final and peak-to-final of `kind` ("raw" or "ema"); None when no epoch evaluated that model."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}, got {kind!r}")
    points = [(r["epoch"], r[kind]) for r in records
              if isinstance(r.get(kind), dict) and is_finite(r[kind].get("top1"))]
    if not points:
        return None
    epochs = tuple(e for e, _ in points)
    top1 = tuple(float(m["top1"]) for _, m in points)
    peak = max(top1)
    peak_i = top1.index(peak)  # first occurrence: ties go to the earliest epoch
    top5 = points[-1][1].get("top5")
    return ModelMetrics(
        epochs=epochs, top1=top1, top1_final=top1[-1], top5_final=float(top5) if is_finite(top5) else None,
        top1_peak=peak, peak_epoch=epochs[peak_i], final_epoch=epochs[-1], p2f=peak - top1[-1],
    )


@dataclass(frozen=True)
class RunMetrics:
    """Everything the report needs from one run directory."""

    run_dir: Path
    seed: int | None  # from the seed<S> directory name, else run.json
    info: dict  # run.json ({} when absent)
    finished: bool  # done.json present
    epochs_planned: int | None
    loss_epochs: tuple[int, ...]
    train_loss: tuple[float, ...]
    loss_spike_epochs: tuple[int, ...]
    raw: ModelMetrics | None
    ema: ModelMetrics | None
    # steps.jsonl (empty, and no spike count, for a run without it: older runs, logging.step_every 0)
    steps: tuple[int, ...] = ()  # logged optimizer steps, ascending
    step_loss: tuple[float | None, ...] = ()  # None: not finite
    step_grad_norm: tuple[float | None, ...] = ()  # global gradient norm; None: not finite
    step_spike_steps: tuple[int, ...] | None = None
    outcome: Outcome = Outcome("finished")  # finished, diverged, unfinished or unreadable (vitreduce.report.outcome)
    last_epoch: int = 0  # the last epoch metrics.jsonl records
    steps_trained: int | None = None  # optimizer steps at the last logged epoch
    ema_decay: float | None = None  # config.yaml's ema.decay, when the run kept an EMA

    @property
    def step_spikes(self) -> int | None:
        return None if self.step_spike_steps is None else len(self.step_spike_steps)

    @property
    def epochs_logged(self) -> int:
        return max(self.loss_epochs + (self.raw.epochs if self.raw else ()) + (self.last_epoch,))

    @property
    def status(self) -> str:
        return self.outcome.status

    @property
    def loss_spikes(self) -> int:
        return len(self.loss_spike_epochs)

    def model(self, kind: ModelKind) -> ModelMetrics | None:
        return self.raw if kind == "raw" else self.ema


def load_run(run_dir: Path | str, *, spike_window: int = DEFAULT_SPIKE_WINDOW,
             spike_threshold: float = DEFAULT_SPIKE_THRESHOLD, step_spike_window: int = DEFAULT_STEP_SPIKE_WINDOW,
             step_spike_z: float = DEFAULT_STEP_SPIKE_Z) -> RunMetrics:
    """Read one run directory and say what became of it (``RunMetrics.outcome``, vitreduce.report.outcome).

    An unfinished run (no done.json) is read as far as it got. A run whose files cannot be read, or hold
    values the engine cannot have written, is returned as unreadable with the file and the reason; a run
    with a number that is not finite is diverged, and has no final accuracy (``raw`` and ``ema`` None).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise VitreduceError(f"run directory {run_dir} does not exist")
    match = _SEED_DIR.fullmatch(run_dir.name)
    try:
        return _read_run(run_dir, int(match.group(1)) if match else None, spike_window, spike_threshold,
                         step_spike_window, step_spike_z)
    except Unreadable as err:
        return RunMetrics(run_dir=run_dir, seed=int(match.group(1)) if match else None, info={}, finished=False,
                          epochs_planned=None, loss_epochs=(), train_loss=(), loss_spike_epochs=(), raw=None,
                          ema=None, outcome=Outcome("unreadable", err.why, file=err.file))


def _read_file(run_dir: Path, name: str, reader):
    """reader(path), with every way the file can fail to read turned into Unreadable(name, why)."""
    try:
        return reader(run_dir / name)
    except UnicodeDecodeError:
        raise Unreadable(name, "not a text file (binary content)") from None
    except (VitreduceError, OSError) as err:
        raise Unreadable(name, str(getattr(err, "strerror", None) or err)) from None


def _read_run(run_dir: Path, seed: int | None, spike_window: int, spike_threshold: float, step_spike_window: int,
              step_spike_z: float) -> RunMetrics:
    info = upgrade_record(_read_file(run_dir, "run.json", _read_json)) if (run_dir / "run.json").is_file() else {}
    done = _read_file(run_dir, "done.json", _read_json) if (run_dir / "done.json").is_file() else None
    if not (run_dir / "metrics.jsonl").is_file() and done is not None:
        raise Unreadable("metrics.jsonl", "missing, although done.json says the run finished")
    records = _read_file(run_dir, "metrics.jsonl", read_metrics) if (run_dir / "metrics.jsonl").is_file() else []
    check_ranges(records)
    with_loss = [r for r in records if isinstance(r.get("train_loss"), int | float)]
    loss_epochs = tuple(r["epoch"] for r in with_loss)
    losses = tuple(float(r["train_loss"]) for r in with_loss)
    planned = (done or {}).get("epochs", info.get("epochs"))
    config = _read_file(run_dir, "config.yaml", read_yaml) if (run_dir / "config.yaml").is_file() else {}
    decay = (config.get("ema") or {}).get("decay") if isinstance(config.get("ema"), dict) else None
    last_step = records[-1].get("step") if records else None
    steps = _read_file(run_dir, "steps.jsonl", lambda p: _step_series(p, step_spike_window, step_spike_z))
    outcome = classify(records, done is not None, first_bad_step(steps.get("steps", ()), steps.get("step_loss", ())))
    usable = outcome.status != "diverged"  # a diverged run has no final accuracy, not an earlier epoch's
    return RunMetrics(
        run_dir=run_dir, seed=seed if seed is not None else info.get("seed"), info=info, finished=done is not None,
        epochs_planned=planned if isinstance(planned, int) else None,
        loss_epochs=loss_epochs, train_loss=losses,
        loss_spike_epochs=tuple(find_loss_spikes(loss_epochs, losses, window=spike_window,
                                                 threshold=spike_threshold)),
        raw=model_metrics(records, "raw") if usable else None, ema=model_metrics(records, "ema") if usable else None,
        outcome=outcome, last_epoch=max((r["epoch"] for r in records), default=0), **steps,
        steps_trained=last_step if isinstance(last_step, int) else None,
        ema_decay=float(decay) if is_finite(decay) and 0 < decay < 1 else None,
    )


def _step_series(path: Path, window: int, z: float) -> dict:
    """RunMetrics' step fields from a steps.jsonl; none when the run has no logged step."""
    records = read_steps(path) if path.is_file() else []
    if not records:
        return {}
    steps = tuple(r["step"] for r in records)
    loss = tuple(_number(r.get("loss")) for r in records)
    return {"steps": steps, "step_loss": loss, "step_grad_norm": tuple(_number(r.get("grad_norm")) for r in records),
            "step_spike_steps": tuple(find_step_spikes(steps, loss, window=window, z=z))}


def _number(value) -> float | None:
    return float(value) if is_finite(value) else None


@dataclass(frozen=True)
class StudyRuns:
    """The runs of a study directory, grouped by variant (in the study's order) and sorted by seed."""

    study_dir: Path
    name: str
    baseline: str
    variants: dict[str, list[RunMetrics]]  # included runs (finished; unfinished too on request); may be empty
    excluded: list[tuple[str, RunMetrics]]  # every other run (diverged, unfinished, unreadable), with its variant
    statistics: dict | None = None  # study.yaml's `statistics:` section (checked by the report), if any
    runs: dict[str, list[RunMetrics]] = field(default_factory=dict)  # every run of every variant, by seed
    unlisted: tuple[str, ...] = ()  # run folders of variants study.yaml does not name: not reported
    labels: dict[str, str] = field(default_factory=dict)  # a sweep's variant -> its base model's label

    def included(self, run: RunMetrics) -> bool:
        return not any(r is run for _, r in self.excluded)


def _spec_variant_names(spec: dict, labels: dict[str, str]) -> list[str]:
    variants = spec.get("variants")
    names: list = []
    if isinstance(variants, dict):
        names = list(variants)
    elif isinstance(variants, list):
        names = [v if isinstance(v, str) else v.get("name") if isinstance(v, dict) else None for v in variants]
    return [str(n) for n in names if n is not None] + list(labels)


def _spec_seeds(spec: dict) -> list[int]:
    seeds = spec.get("seeds")
    return [s for s in seeds if isinstance(s, int) and not isinstance(s, bool)] if isinstance(seeds, list) else []


def _not_started(run_dir: Path, seed: int) -> RunMetrics:
    return RunMetrics(run_dir=run_dir, seed=seed, info={}, finished=False, epochs_planned=None, loss_epochs=(),
                      train_loss=(), loss_spike_epochs=(), raw=None, ema=None,
                      outcome=Outcome("unfinished", "not started (no run directory)"))


def load_study(study_dir: Path | str, *, baseline: str | None = None, include_unfinished: bool = False,
               spike_window: int = DEFAULT_SPIKE_WINDOW, spike_threshold: float = DEFAULT_SPIKE_THRESHOLD,
               step_spike_window: int = DEFAULT_STEP_SPIKE_WINDOW,
               step_spike_z: float = DEFAULT_STEP_SPIKE_Z, labels_of: LabelsOf | None = None) -> StudyRuns:
    """Read STUDY_DIR/runs/<variant>/seed<S>/ and resolve the baseline variant.

    With a study.yaml, the study is its variants x seeds: a listed run without a folder is unfinished (not
    started), and a folder of a variant it does not name is left out (``unlisted``). The baseline is the
    argument, else study.yaml's `baseline:`, else the first variant (in the order of study.yaml's
    `variants:` list when present, else sorted by name). Only finished runs are included (unfinished ones
    too with `include_unfinished`); every other run is in `excluded` with its outcome. `labels_of` names the
    variants of study.yaml's `sweep:` section with their base model's label (the study spec knows how:
    vitreduce.study.reporting hands it over); without it only `variants:` is read.
    """
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise VitreduceError(f"study directory {study_dir} does not exist; pass the --out of `vitreduce study`")
    find_step_spikes((), (), window=step_spike_window, z=step_spike_z)  # checks the settings before any run is read
    spec: dict = read_yaml(study_dir / "study.yaml") if (study_dir / "study.yaml").is_file() else {}
    runs_root = study_dir / "runs"
    on_disk = sorted(p.name for p in runs_root.iterdir() if p.is_dir()) if runs_root.is_dir() else []
    labels = labels_of(spec) if labels_of and spec else {}
    named = _spec_variant_names(spec, labels)
    order = [v for v in named if v in on_disk] + ([] if named else on_disk)
    read = functools.partial(load_run, spike_window=spike_window, spike_threshold=spike_threshold,
                             step_spike_window=step_spike_window, step_spike_z=step_spike_z)
    every: dict[str, list[RunMetrics]] = {}
    for variant in order:
        found = {int(m.group(1)): p for p in (runs_root / variant).iterdir()
                 if p.is_dir() and (m := _SEED_DIR.fullmatch(p.name))}
        every[variant] = [read(found[s]) if s in found else _not_started(runs_root / variant / f"seed{s}", s)
                          for s in sorted(set(found) | set(_spec_seeds(spec)))]
    if not any(r.run_dir.is_dir() for runs in every.values() for r in runs):
        raise VitreduceError(f"no runs found under {runs_root}/<variant>/seed<S>/; is {study_dir} a study directory?")
    keep = ("finished", "unfinished") if include_unfinished else ("finished",)
    variants = {v: kept for v, runs in every.items() if (kept := [r for r in runs if r.status in keep])}
    if not variants and not any(r.status == "diverged" for runs in every.values() for r in runs):
        counts = Counter(r.status for runs in every.values() for r in runs)
        raise VitreduceError(f"none of the runs under {runs_root} has finished ({_counted(counts)}); wait for them, "
                             "pass --include-unfinished, or see each run's train.log")
    baseline = baseline or spec.get("baseline") or order[0]
    if baseline not in order:
        raise VitreduceError(f"baseline variant {baseline!r} has no runs in {runs_root}; choose one of {order}")
    excluded = [(v, r) for v, runs in every.items() for r in runs if r not in variants.get(v, [])]
    return StudyRuns(study_dir=study_dir, name=str(spec.get("name") or study_dir.name), baseline=str(baseline),
                     variants=variants, excluded=excluded, statistics=spec.get("statistics"), runs=every,
                     unlisted=tuple(v for v in on_disk if v not in order), labels=labels)


def _counted(counts: Counter) -> str:
    return ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s])


def _common(runs: Sequence[RunMetrics], key: str, variant: str):
    values = {json.dumps(r.info.get(key)) for r in runs}
    if len(values) > 1:
        raise VitreduceError(f"the runs of variant {variant!r} disagree on run.json {key!r} ({sorted(values)}); "
                             "a variant's seeds must train the same model: move the odd run out")
    return runs[0].info.get(key)



def summarize_kind(runs: Sequence[RunMetrics], kind: ModelKind) -> KindSummary:
    """Mean and std (ddof=1) over seeds of one model kind's figures; None where undefined."""
    models = [m for m in (r.model(kind) for r in runs) if m is not None]
    return KindSummary(len(models), *(Spread.of([getattr(m, name) for m in models])
                                      for name in ("top1_final", "top5_final", "top1_peak", "peak_epoch", "p2f")))


def summarize_variant(variant: str, runs: Sequence[RunMetrics],
                      every: Sequence[RunMetrics] | None = None) -> VariantEntry:
    """The summary.json entry of one variant (docs/metrics.md lists the keys): `runs` are the included runs
    (what every mean and test is over), `every` all its runs (each with its outcome; default `runs`). Its
    throughput, sharpness and baseline mark are summarize_study's."""
    every = runs if every is None else every
    described = list(runs) or [r for r in every if r.info]  # a variant whose every run diverged is still described
    arch = {key: _common(described, key, variant) if described else None for key in ARCH_KEYS}
    hidden, embed = arch["mlp_hidden"], arch["embed_dim"]
    return VariantEntry(
        n=len(runs), seeds=tuple(r.seed for r in runs), unfinished_included=sum(not r.finished for r in runs),
        outcomes=Outcomes.of([(r.seed, r.outcome) for r in every], [r.seed for r in runs]), **arch,
        steps_trained=min((r.steps_trained for r in runs if r.steps_trained), default=None),
        ema_decay=max((r.ema_decay for r in runs if r.ema_decay is not None), default=None),
        expansion=hidden / embed if is_finite(hidden) and is_finite(embed) and embed else None,
        loss_spikes=Spread.of([r.loss_spikes for r in runs]),
        step_spikes=Spread.of([r.step_spikes for r in runs]),  # over the runs that have a steps.jsonl
        raw=summarize_kind(runs, "raw"), ema=summarize_kind(runs, "ema"), throughput=None, throughput_img_s=None,
        sharpness={}, baseline=False)


# summary.json's sharpness keys: the measures comparable across variants (docs/metrics.md), per checkpoint.
SHARPNESS_MEASURES = {
    "loss": lambda r: r.get("loss"),
    "trace_per_param": lambda r: per_parameter(r.get("trace"), r.get("parameters")),
    "asam": lambda r: r.get("asam_sharpness"),
    "top_eigenvalue": lambda r: r["top_eigenvalues"][0] if r.get("top_eigenvalues") else None,
}


def summarize_sharpness(runs: Sequence[RunMetrics]) -> dict[str, SharpnessSummary]:
    """{checkpoint: its measures' mean and std} over the runs' analysis files; {} without any."""
    analyses = [read_run_analysis(r.run_dir) for r in runs]
    out: dict[str, SharpnessSummary] = {}
    for which in sorted({w for a in analyses for w in a}):
        present = [a[which] for a in analyses if which in a]
        out[which] = SharpnessSummary(len(present), *(Spread.of([_number(measure(r)) for r in present])
                                                      for measure in SHARPNESS_MEASURES.values()))
    return out


def summarize_study(study: StudyRuns, throughput: dict | None = None) -> dict[str, VariantEntry]:
    """summary.json's variants; `throughput` is throughput.json ({variant: {"infer_img_s": x, ...}})."""
    summary = {}
    for variant, every in (study.runs or study.variants).items():
        runs = study.variants.get(variant, [])
        summary[variant] = dataclasses.replace(summarize_variant(variant, runs, every),
                                               sharpness=summarize_sharpness(runs), baseline=variant == study.baseline)
    measured = {v: t for v in summary if (t := summarize_throughput((throughput or {}).get(v))) is not None}
    for variant, t in measured.items():
        against = same_model_baseline(variant, measured, summary, study.baseline)
        ratio, why = throughput_ratio(t, measured.get(against)) if against else (None, "no baseline of its model")
        t = dataclasses.replace(t, ratio_to_baseline=ratio, ratio_basis=why, ratio_against=against)
        summary[variant] = dataclasses.replace(summary[variant], throughput=t, throughput_img_s=t.median)
    return summary
