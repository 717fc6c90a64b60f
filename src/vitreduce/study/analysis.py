"""Sharpness and loss-landscape analysis of a study's trained runs (the paper's flat-minima question).

For each finished run directory it measures the final and/or peak checkpoint (``model*.safetensors``
and ``checkpoints/best/model*.safetensors``, raw or EMA weights) on a fixed seeded subset of the
run's own training split, seen as the run's evaluation saw it (the eval preprocessing of its
config.yaml: interpolation, crop_pct, mean/std; the class order and image reader of ``vitreduce
eval``; the class folders must be the classes the model file records, ``data.recorded.check_classes``), and
writes ``RUN/analysis/sharpness_<final|peak>.json`` (the ``vitreduce sharpness --json``
object plus the options used, the preprocessing among them) and ``RUN/analysis/landscape/`` (a 1D
filter-normalised surface around the final checkpoint and the interpolation peak -> final, CSV +
PNG, and options.json). A result whose options match is reused, so rerunning a study costs nothing.
The report reads these files (vitreduce.report.analysis_files); nothing here is needed to read them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from vitreduce.config_tree import read_yaml
from vitreduce.errors import VitreduceError
from vitreduce.files import write_json
from vitreduce.report.analysis_files import ANALYSED_CHECKPOINTS, ANALYSIS_DIR, SEGMENTATION, AnalysedCheckpoint
from vitreduce.sharpness.options import Method, SharpnessOptions
from vitreduce.study.probe_analysis import SegmentationProbeConfig, probe_run

if TYPE_CHECKING:  # the measuring imports torch; the `analysis:` section of a spec is read without it
    from vitreduce.data.transforms import EvalPreprocessing


class _RunCheckpoints(BaseModel):
    """Which model files of a run are measured."""

    model_config = ConfigDict(extra="forbid")

    checkpoints: list[AnalysedCheckpoint] = Field(default_factory=lambda: list(ANALYSED_CHECKPOINTS))
    weights: Literal["ema", "raw"] = "ema"  # the paper's reported accuracy is the EMA model's


# _RunCheckpoints is the last base so that its fields come first (pydantic orders fields base-first):
# study.yaml lists the `analysis:` keys in the order it always had.
class AnalysisConfig(SharpnessOptions, _RunCheckpoints):
    """What a study measures on its finished runs (the `analysis:` section of a study spec).

    The sharpness keys are ``vitreduce.sharpness.options.SharpnessOptions``'s; the defaults that
    differ from the CLI's are cheaper, because a study measures every run at up to two checkpoints
    where the CLI measures one checkpoint once.
    """

    batches: int = Field(4, ge=1)
    batch_size: int = Field(32, ge=1)
    iters: int = Field(50, ge=1)
    trace_samples: int = 10
    method: Method = "lanczos"  # the top eigenvalue in far fewer products than power iteration
    adaptive: bool = True  # ASAM: the report's scale-invariant sharpness column (one gradient, one loss)
    landscape: bool = True  # 1D surface around the final checkpoint, interpolation peak -> final
    landscape_steps: int = Field(11, ge=3)
    landscape_span: float = Field(1.0, gt=0)
    landscape_directions: int = Field(3, ge=1)  # random directions of the 1D surface (seeds seed, seed + 1, ...)
    segmentation: SegmentationProbeConfig | None = None  # the segmentation probe of the final model (probe_analysis)


def checkpoint_path(run_dir: Path, which: str, weights: str) -> Path:
    """The model file of a run's final or peak (``checkpoints/best``) weights."""
    name = "model_ema.safetensors" if weights == "ema" else "model.safetensors"
    path = run_dir / name if which == "final" else run_dir / "checkpoints" / "best" / name
    if not path.is_file():
        raise VitreduceError(f"{path} is missing: the run has no {which} {weights} checkpoint "
                             "(set analysis.weights: raw for runs without EMA)")
    return path


def _data_root(run_dir: Path) -> Path:
    root = read_yaml(run_dir / "config.yaml").get("data", {}).get("root")
    if not isinstance(root, str):
        raise VitreduceError(f"{run_dir / 'config.yaml'} names no data.root; it was not written by vitreduce")
    return Path(root)


def _run_batches(model, run_dir: Path, config: AnalysisConfig, model_file: Path, preprocessing: EvalPreprocessing):
    """The fixed subset of the run's training split, read as its evaluation read it: its eval preprocessing, and
    its class folders checked against the classes the model file records (a folder renamed or reordered since
    training would shift every label after it)."""
    from vitreduce.data.recorded import recorded_classes
    from vitreduce.reduction.checkpoint import read_metadata
    from vitreduce.sharpness.batches import load_batches

    classes = recorded_classes(read_metadata(model_file), str(model_file))
    return load_batches(model, _data_root(run_dir), augment=preprocessing.augment, **config.subset(),
                        classes=classes, model_file=str(model_file))


def _options_key(config: AnalysisConfig, which: str, preprocessing: EvalPreprocessing) -> dict:
    """What a result was measured with; a stored result is reused only when this is equal.

    The preprocessing's source is named relative to the run (its ``config.yaml``), so that a study
    directory moved elsewhere still reuses its results; results written before the preprocessing
    was recorded are measured again.
    """
    from vitreduce.data.transforms import DEFAULTS, RUN_CONFIG

    source = DEFAULTS if preprocessing.source == DEFAULTS else RUN_CONFIG
    return {**config.model_dump(exclude={"checkpoints", "landscape", "landscape_steps", "landscape_span",
                                                "landscape_directions", "segmentation"}),
            "checkpoint": which, "preprocessing": {**preprocessing.record(), "source": source}}


def _reusable(path: Path, options: dict) -> bool:
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("options") == options
    except json.JSONDecodeError:
        return False


def analyze_run(run_dir: str | Path, config: AnalysisConfig, log=print) -> list[Path]:
    """Measure one finished run; returns the files written (reused results are not rewritten).

    Args:
        run_dir: a finished run directory (docs/run-directory.md).
        config: what to measure.
        log: where progress lines go.
    """
    from vitreduce.data.transforms import eval_preprocessing_for
    from vitreduce.reduction.checkpoint import load
    from vitreduce.sharpness.measures import analyze_sharpness

    run_dir = Path(run_dir)
    out = run_dir / ANALYSIS_DIR
    written: list[Path] = []
    models = {}
    batches = None
    for which in config.checkpoints:
        path = checkpoint_path(run_dir, which, config.weights)
        preprocessing = eval_preprocessing_for(path)  # the run's config.yaml: every checkpoint of a run shares it
        models[which] = load(path)
        target = out / f"sharpness_{which}.json"
        options = _options_key(config, which, preprocessing)
        if _reusable(target, options):
            continue
        if batches is None:
            batches = _run_batches(models[which], run_dir, config, path, preprocessing)
        log(f"sharpness of {run_dir} ({which}, {config.weights} weights)")
        result = analyze_sharpness(models[which], batches, config)
        write_json(target, {**result.to_dict(), "options": options})
        written.append(target)
    if config.landscape and "final" in models:
        written += _landscape(run_dir, config, models, batches, log)
    _remove_stale(out, config)
    if config.segmentation is not None:
        model_file = checkpoint_path(run_dir, "final", config.weights)
        if probe_run(run_dir, config.segmentation, model_file, log):
            written.append(run_dir.joinpath(*SEGMENTATION, "results.json"))
    return written


def _remove_stale(out: Path, config: AnalysisConfig) -> None:
    """Results of an earlier analysis that the current options no longer produce, so that a report never
    mixes them with the current ones."""
    stale = [out / f"sharpness_{which}.json" for which in ANALYSED_CHECKPOINTS if which not in config.checkpoints]
    landscape = out / "landscape"
    if not (config.landscape and "final" in config.checkpoints):
        stale += list(landscape.glob("*")) if landscape.is_dir() else []
    elif "peak" not in config.checkpoints:
        stale += [landscape / "interpolation.csv", landscape / "interpolation.png"]
    for path in stale:
        path.unlink(missing_ok=True)


def _landscape(run_dir: Path, config: AnalysisConfig, models: dict, batches, log) -> list[Path]:
    from vitreduce.data.transforms import eval_preprocessing_for
    from vitreduce.sharpness.landscape import interpolate, surfaces_1d, write_landscape

    out = run_dir / ANALYSIS_DIR / "landscape"
    marker = out / "options.json"
    model_file = checkpoint_path(run_dir, "final", config.weights)
    preprocessing = eval_preprocessing_for(model_file)
    options = {**_options_key(config, "final", preprocessing), "steps": config.landscape_steps,
               "span": config.landscape_span, "directions": config.landscape_directions,
               "interpolation": "peak" in models}
    if _reusable(marker, options):
        return []
    final = models["final"]
    if batches is None:
        batches = _run_batches(final, run_dir, config, model_file, preprocessing)
    log(f"loss landscape of {run_dir}")
    # Both evaluate in eval mode and put the weights back bitwise.
    lines = surfaces_1d(final, batches, seed=config.seed, directions=config.landscape_directions,
                        steps=config.landscape_steps, span=config.landscape_span)
    path = interpolate(models["peak"], final, batches) if "peak" in models else None
    run = f"{run_dir.parent.name}/{run_dir.name}"
    written = write_landscape(out, line=lines, interpolation=path, title=f"{run} final, {config.weights} weights",
                              other_title=f"{run} final" if path else "", start_title=f"{run} peak")
    write_json(marker, {"options": options})
    return [*written, marker]
