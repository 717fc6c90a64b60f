"""Per-run and per-variant metrics: pure functions over run directories (docs/run-directory.md).

Every figure is defined in docs/metrics.md; this module is the one place that computes them.
"""
from __future__ import annotations

import json
import math
import re
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from vitreduce.config_tree import read_yaml
from vitreduce.errors import VitreduceError
from vitreduce.numbers import is_finite
from vitreduce.reduction.accounting import RECORD_FIELDS, upgrade_record
from vitreduce.sharpness.measures import per_parameter
from vitreduce.study.analysis import read_run_analysis
from vitreduce.train.logs import read_metrics, read_steps

ModelKind = Literal["raw", "ema"]  # the trained weights, or their exponential moving average
MODEL_KINDS: tuple[ModelKind, ...] = ("raw", "ema")
KIND_TITLE: dict[ModelKind, str] = {"raw": "raw model", "ema": "EMA model"}  # as tables and figures name them
DEFAULT_SPIKE_THRESHOLD = 0.10  # an epoch's train loss more than 10% above the reference minimum
DEFAULT_SPIKE_WINDOW = 5  # reference = minimum over the previous 5 logged epochs
DEFAULT_STEP_SPIKE_WINDOW = 50  # a logged step's reference: the previous 50 finite logged losses
DEFAULT_STEP_SPIKE_Z = 7.0  # a step spike: more than 7 robust standard deviations above their median
MAD_TO_SD = 1.4826  # the median absolute deviation times this estimates a normal distribution's sd
# run.json fields that describe the model; every seed of a variant must agree on them.
ARCH_KEYS = (*RECORD_FIELDS, "num_classes", "epochs")
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


def find_loss_spikes(epochs: Sequence[int], losses: Sequence[float | None], *,
                     window: int = DEFAULT_SPIKE_WINDOW, threshold: float = DEFAULT_SPIKE_THRESHOLD) -> list[int]:
    """Epochs whose train loss is a spike (docs/metrics.md).

    An epoch is a spike when its loss is not finite, or exceeds (1 + threshold) times the minimum finite
    loss of the previous `window` logged epochs. The first epoch has no reference and is only a spike
    when not finite. Epochs without a loss (None) are skipped and are no reference.
    """
    if window < 1:
        raise VitreduceError(f"spike window must be >= 1 epoch, got {window}")
    if threshold < 0:
        raise VitreduceError(f"spike threshold must be >= 0 (a relative increase), got {threshold}")
    spikes = []
    for i, (epoch, loss) in enumerate(zip(epochs, losses, strict=True)):
        if loss is None:
            continue
        if not math.isfinite(loss):
            spikes.append(epoch)
            continue
        previous = [x for x in losses[max(0, i - window):i] if x is not None and math.isfinite(x)]
        if previous and loss > (1.0 + threshold) * min(previous):
            spikes.append(epoch)
    return spikes


def find_step_spikes(steps: Sequence[int], losses: Sequence[float | None], *,
                     window: int = DEFAULT_STEP_SPIKE_WINDOW, z: float = DEFAULT_STEP_SPIKE_Z) -> list[int]:
    """Logged steps whose loss is a spike (docs/metrics.md).

    A step is a spike when its loss is not finite (None), or exceeds the median m of the previous
    `window` finite logged losses by more than `z` x 1.4826 x their median absolute deviation (a robust
    z-score, one-sided). A step is judged once `window` finite losses precede it; spikes stay in the
    reference, which the median and the MAD barely notice.
    """
    if window < 1:
        raise VitreduceError(f"step spike window must be >= 1 logged step, got {window}")
    if not z >= 0:
        raise VitreduceError(f"step spike z must be >= 0 (robust standard deviations), got {z}")
    spikes = []
    reference: deque[float] = deque(maxlen=window)
    for step, loss in zip(steps, losses, strict=True):
        if loss is None or not math.isfinite(loss):
            spikes.append(step)
            continue
        if len(reference) == window:
            median = statistics.median(reference)
            scale = MAD_TO_SD * statistics.median(abs(x - median) for x in reference)
            if loss > median + z * scale:
                spikes.append(step)
        reference.append(loss)
    return spikes


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

    @property
    def step_spikes(self) -> int | None:
        return None if self.step_spike_steps is None else len(self.step_spike_steps)

    @property
    def epochs_logged(self) -> int:
        return max(self.loss_epochs + (self.raw.epochs if self.raw else ()), default=0)

    @property
    def loss_spikes(self) -> int:
        return len(self.loss_spike_epochs)

    def model(self, kind: ModelKind) -> ModelMetrics | None:
        return self.raw if kind == "raw" else self.ema


def load_run(run_dir: Path | str, *, spike_window: int = DEFAULT_SPIKE_WINDOW,
             spike_threshold: float = DEFAULT_SPIKE_THRESHOLD, step_spike_window: int = DEFAULT_STEP_SPIKE_WINDOW,
             step_spike_z: float = DEFAULT_STEP_SPIKE_Z) -> RunMetrics:
    """Read one run directory; an unfinished run (no done.json) is read as far as it got."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise VitreduceError(f"run directory {run_dir} does not exist")
    info = upgrade_record(_read_json(run_dir / "run.json")) if (run_dir / "run.json").is_file() else {}
    done = _read_json(run_dir / "done.json") if (run_dir / "done.json").is_file() else None
    metrics_path = run_dir / "metrics.jsonl"
    records = read_metrics(metrics_path) if metrics_path.is_file() else []
    with_loss = [r for r in records if isinstance(r.get("train_loss"), int | float)]
    loss_epochs = tuple(r["epoch"] for r in with_loss)
    losses = tuple(float(r["train_loss"]) for r in with_loss)
    match = _SEED_DIR.fullmatch(run_dir.name)
    seed = int(match.group(1)) if match else info.get("seed")
    planned = (done or {}).get("epochs", info.get("epochs"))
    return RunMetrics(
        run_dir=run_dir, seed=seed, info=info, finished=done is not None,
        epochs_planned=planned if isinstance(planned, int) else None,
        loss_epochs=loss_epochs, train_loss=losses,
        loss_spike_epochs=tuple(find_loss_spikes(loss_epochs, losses, window=spike_window,
                                                 threshold=spike_threshold)),
        raw=model_metrics(records, "raw"), ema=model_metrics(records, "ema"),
        **_step_series(run_dir / "steps.jsonl", step_spike_window, step_spike_z),
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
    variants: dict[str, list[RunMetrics]]  # included runs; a variant with none is left out
    excluded: list[tuple[str, RunMetrics]]  # unfinished runs left out, with their variant
    statistics: dict | None = None  # study.yaml's `statistics:` section (checked by the report), if any


def _spec_variant_names(spec: dict) -> list[str]:
    variants = spec.get("variants")
    if isinstance(variants, dict):
        return [str(k) for k in variants]
    if isinstance(variants, list):
        names = [v if isinstance(v, str) else v.get("name") if isinstance(v, dict) else None for v in variants]
        return [str(n) for n in names if n is not None]
    return []


def load_study(study_dir: Path | str, *, baseline: str | None = None, include_unfinished: bool = False,
               spike_window: int = DEFAULT_SPIKE_WINDOW, spike_threshold: float = DEFAULT_SPIKE_THRESHOLD,
               step_spike_window: int = DEFAULT_STEP_SPIKE_WINDOW,
               step_spike_z: float = DEFAULT_STEP_SPIKE_Z) -> StudyRuns:
    """Read STUDY_DIR/runs/<variant>/seed<S>/ and resolve the baseline variant.

    The baseline is the argument, else study.yaml's `baseline:`, else the first variant (in the order of
    study.yaml's `variants:` list when present, else sorted by name). Unfinished runs are left out (and
    listed in `excluded`) unless `include_unfinished`.
    """
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise VitreduceError(f"study directory {study_dir} does not exist; pass the --out of `vitreduce study`")
    find_step_spikes((), (), window=step_spike_window, z=step_spike_z)  # checks the settings before any run is read
    spec: dict = {}
    if (study_dir / "study.yaml").is_file():
        spec = read_yaml(study_dir / "study.yaml")
    runs_root = study_dir / "runs"
    on_disk = sorted(p.name for p in runs_root.iterdir() if p.is_dir()) if runs_root.is_dir() else []
    listed = [v for v in _spec_variant_names(spec) if v in on_disk]
    order = listed + [v for v in on_disk if v not in listed]
    variants: dict[str, list[RunMetrics]] = {}
    excluded: list[tuple[str, RunMetrics]] = []
    found = 0
    for variant in order:
        seed_dirs = [p for p in (runs_root / variant).iterdir() if p.is_dir() and _SEED_DIR.fullmatch(p.name)]
        runs = [load_run(p, spike_window=spike_window, spike_threshold=spike_threshold,
                         step_spike_window=step_spike_window, step_spike_z=step_spike_z) for p in seed_dirs]
        found += len(runs)
        runs.sort(key=lambda r: r.seed if r.seed is not None else -1)
        excluded += [(variant, r) for r in runs if not r.finished and not include_unfinished]
        kept = [r for r in runs if r.finished or include_unfinished]
        if kept:
            variants[variant] = kept
    if found == 0:
        raise VitreduceError(f"no runs found under {runs_root}/<variant>/seed<S>/; is {study_dir} a study directory?")
    if not variants:
        raise VitreduceError(f"none of the {found} runs under {runs_root} has finished (no done.json); "
                             "wait for them or pass --include-unfinished")
    baseline = baseline or spec.get("baseline") or order[0]
    if baseline not in order:
        raise VitreduceError(f"baseline variant {baseline!r} has no runs in {runs_root}; choose one of {order}")
    return StudyRuns(study_dir=study_dir, name=str(spec.get("name") or study_dir.name), baseline=str(baseline),
                     variants=variants, excluded=excluded, statistics=spec.get("statistics"))


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample std with ddof=1, n) over the finite values; std is None when n < 2, both when n = 0."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return None, None, 0
    std = float(np.std(xs, ddof=1)) if len(xs) >= 2 else None
    return float(np.mean(xs)), std, len(xs)


def _common(runs: Sequence[RunMetrics], key: str, variant: str):
    values = {json.dumps(r.info.get(key)) for r in runs}
    if len(values) > 1:
        raise VitreduceError(f"the runs of variant {variant!r} disagree on run.json {key!r} ({sorted(values)}); "
                             "a variant's seeds must train the same model: move the odd run out")
    return runs[0].info.get(key)


def summarize_kind(runs: Sequence[RunMetrics], kind: ModelKind) -> dict:
    """Mean and std (ddof=1) over seeds of one model kind's figures; None where undefined."""
    models = [r.model(kind) for r in runs]
    models = [m for m in models if m is not None]
    out: dict = {"n": len(models)}
    for name, attr in (("top1_final", "top1_final"), ("top5_final", "top5_final"), ("top1_peak", "top1_peak"),
                       ("peak_epoch", "peak_epoch"), ("p2f", "p2f")):
        mean, std, _ = mean_std([getattr(m, attr) for m in models])
        out[f"{name}_mean"], out[f"{name}_std"] = mean, std
    return out


def summarize_variant(variant: str, runs: Sequence[RunMetrics]) -> dict:
    """The summary.json entry of one variant (docs/metrics.md lists the keys)."""
    out: dict = {"n": len(runs), "seeds": [r.seed for r in runs],
                 "unfinished_included": sum(not r.finished for r in runs)}
    for key in ARCH_KEYS:
        out[key] = _common(runs, key, variant)
    hidden, embed = out["mlp_hidden"], out["embed_dim"]
    out["expansion"] = hidden / embed if is_finite(hidden) and is_finite(embed) and embed else None
    out["loss_spikes_mean"], out["loss_spikes_std"], _ = mean_std([r.loss_spikes for r in runs])
    # over the runs that have a steps.jsonl; null when none has
    out["step_spikes_mean"], out["step_spikes_std"], _ = mean_std([r.step_spikes for r in runs])
    for kind in MODEL_KINDS:
        out[kind] = summarize_kind(runs, kind)
    return out


# summary.json's sharpness keys: the measures comparable across variants (docs/metrics.md), per checkpoint.
SHARPNESS_MEASURES = {
    "loss": lambda r: r.get("loss"),
    "trace_per_param": lambda r: per_parameter(r.get("trace"), r.get("parameters")),
    "asam": lambda r: r.get("asam_sharpness"),
    "top_eigenvalue": lambda r: r["top_eigenvalues"][0] if r.get("top_eigenvalues") else None,
}


def summarize_sharpness(runs: Sequence[RunMetrics]) -> dict[str, dict]:
    """{checkpoint: {"n", "<measure>_mean", "<measure>_std"}} over the runs' analysis files; {} without any."""
    analyses = [read_run_analysis(r.run_dir) for r in runs]
    out: dict[str, dict] = {}
    for which in sorted({w for a in analyses for w in a}):
        present = [a[which] for a in analyses if which in a]
        entry: dict = {"n": len(present)}
        for name, measure in SHARPNESS_MEASURES.items():
            entry[f"{name}_mean"], entry[f"{name}_std"], _ = mean_std([_number(measure(r)) for r in present])
        out[which] = entry
    return out


def summarize_throughput(record: dict | None) -> dict | None:
    """throughput.json's entry of one variant as {"median", "min", "max", "device", "batch_size", "precision"}."""
    if not record or not is_finite(record.get("infer_img_s")):
        return None
    return {"median": float(record["infer_img_s"]), "min": _number(record.get("infer_img_s_min")),
            "max": _number(record.get("infer_img_s_max")), "device": record.get("device"),
            "batch_size": record.get("batch_size"), "precision": record.get("precision"),
            "base_model": record.get("base_model")}  # None in files written before studies of several models


def throughput_ratio(variant: dict | None, baseline: dict | None) -> tuple[float | None, str]:
    """(median / baseline median, why) where the [min, max] ranges do not overlap; else (None, the reason)."""
    if variant is None or baseline is None:
        return None, "no throughput"
    if None in (variant["min"], variant["max"], baseline["min"], baseline["max"]):
        return None, "no range"
    if variant["min"] <= baseline["max"] and baseline["min"] <= variant["max"]:
        return None, "ranges overlap"
    return variant["median"] / baseline["median"], "ranges apart"


def summarize_study(study: StudyRuns, throughput: dict | None = None) -> dict[str, dict]:
    """summary.json: one entry per variant; `throughput` is throughput.json ({variant: {"infer_img_s": x, ...}})."""
    summary = {}
    for variant, runs in study.variants.items():
        entry = summarize_variant(variant, runs)
        entry["throughput"] = summarize_throughput((throughput or {}).get(variant))
        entry["throughput_img_s"] = entry["throughput"]["median"] if entry["throughput"] else None
        entry["sharpness"] = summarize_sharpness(runs)
        entry["baseline"] = variant == study.baseline
        summary[variant] = entry
    measured = {v: e["throughput"] for v, e in summary.items() if e["throughput"] is not None}
    for variant, t in measured.items():
        against = _same_model_baseline(variant, measured, summary, study.baseline)
        ratio, why = (throughput_ratio(t, measured.get(against)) if against else (None, "no baseline of its model"))
        t.update(ratio_to_baseline=ratio, ratio_basis=why, ratio_against=against)
    return summary


def _same_model_baseline(variant: str, measured: dict[str, dict], summary: dict, baseline: str) -> str | None:
    """The study's baseline if profiled as the same base model (always, in files naming none), else that base
    model's unreduced variant (a sweep's ``<label>.baseline``), else None: speeds of two models are not compared."""
    model = measured[variant]["base_model"]
    if model is None or measured.get(baseline, {}).get("base_model") == model:
        return baseline
    return next((v for v, t in measured.items() if t["base_model"] == model
                 and summary[v].get("reduction") in ("none", None)), None)
