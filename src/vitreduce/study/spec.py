"""Study specs: the typed spec, its expansion into runs, and the checks made before any run starts.

A study spec (YAML, docs/studies.md) names a base train config, overrides for every run, the variants
(each a set of overrides, usually ``model.reduction``) and the seeds. ``expand`` turns it into one
validated ``RunPlan`` per variant x seed; ``preflight`` builds every model on the meta device and
checks every dataset; ``prepare_study_dir`` records the resolved spec in ``study.yaml`` and refuses a
spec that would change any run. Running them is vitreduce.study.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import fcntl
import inspect
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vitreduce.config_tree import apply_override, merge, read_yaml
from vitreduce.data.synth import ensure_synth
from vitreduce.errors import VitreduceError
from vitreduce.study.analysis import AnalysisConfig
from vitreduce.train import rundir
from vitreduce.train.config import ModelConfig, TrainConfig, changed_keys, validate

SPEC_FILE, RUNS, LOCK, LOG = "study.yaml", "runs", ".lock", "train.log"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


# ---------------------------------------------------------------------------------------------------
# The spec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError("must be a folder name: letters, digits, '_', '-', '.' (not starting with '.')")
    return value


def _check_overrides(value: dict[str, Any] | None) -> dict[str, Any]:
    value = value or {}
    for key in value:
        if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
            raise ValueError(f"override key {key!r} must be a dotted train-config key, e.g. model.reduction")
        if key == "seed":
            raise ValueError("'seed' is set per run from the study's seeds; remove it from the overrides")
    return value


class VariantSpec(_Strict):
    """One variant: a name (its directory under runs/) and the train-config keys it changes."""

    name: str
    overrides: dict[str, Any] = {}

    @field_validator("overrides", mode="before")
    @classmethod
    def _overrides(cls, value: dict[str, Any] | None) -> dict[str, Any]:
        return _check_overrides(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value)


class StudySpec(_Strict):
    """A study: base train config + overrides, variants x seeds, and how to run them."""

    name: str
    base: dict[str, Any]  # the base train config tree (paths are read into a tree by load_spec)
    overrides: dict[str, Any] = {}  # dotted train-config key -> value, for every run
    variants: list[VariantSpec] = Field(min_length=1)
    seeds: list[int] = Field([42], min_length=1)
    baseline: str | None = None  # a variant name; default the first
    throughput: bool | dict[str, Any] = False  # true, or options of vitreduce.efficiency.profiler.profile_variants
    analysis: AnalysisConfig | None = None  # sharpness/landscape of final/peak checkpoints (study.analysis)
    launcher: Literal["python", "torchrun"] = "python"
    nproc_per_node: int = Field(1, ge=1)  # processes per run under torchrun
    out: str | None = None  # default runs/studies/<name>

    @field_validator("overrides", mode="before")
    @classmethod
    def _overrides(cls, value: dict[str, Any] | None) -> dict[str, Any]:
        return _check_overrides(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if any(s < 0 for s in value) or len(set(value)) != len(value):
            raise ValueError(f"must be distinct non-negative integers, got {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> StudySpec:
        names = [v.name for v in self.variants]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"variants: names must be unique, repeated: {', '.join(repeated)}")
        if self.baseline is None:
            self.baseline = names[0]
        elif self.baseline not in names:
            close = difflib.get_close_matches(self.baseline, names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"baseline: {self.baseline!r} is not a variant; {hint}variants: {', '.join(names)}")
        if self.nproc_per_node > 1 and self.launcher != "torchrun":
            raise ValueError("nproc_per_node > 1 needs launcher: torchrun")
        if isinstance(self.throughput, dict):
            _check_profile_options(self.throughput)
        return self


def _check_profile_options(options: dict[str, Any]) -> None:
    try:
        from vitreduce.efficiency.profiler import profile_variants
    except ImportError:
        return  # checked again (and reported) when the study profiles
    fixed = {"model_name", "reductions", "img_size", "num_classes", "model_kwargs", "progress"}
    valid = [p for p in inspect.signature(profile_variants).parameters if p not in fixed]
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=2)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ValueError(f"throughput.{key}: unknown profile option; {hint}valid: {', '.join(valid)}")


def load_spec(path: str | os.PathLike, sets: list[str] | tuple[str, ...] = ()) -> StudySpec:
    """Read a study spec file, apply ``--set`` items, validate.

    Args:
        path: the spec YAML. ``base`` (a path or list of paths, relative to the file, or a mapping) is
            read into a tree; ``extends: other.yaml`` (or a list, relative paths) starts from other spec
            files, merged key by key in order, then this file's keys.
        sets: ``key=value`` items (value parsed as YAML): ``base.K=V`` edits the base config,
            ``overrides.K=V`` adds a train-config override for every run, ``seeds=[0,1]`` etc. set spec keys.
    """
    tree = _read_tree(Path(path), ())
    for item in sets:
        _apply_set(tree, item)
    spec = parse_spec(tree, source=str(path))
    for item in sets:
        key = item.partition("=")[0].strip()
        if key.startswith("base."):
            _check_not_shadowed(spec, item, key.removeprefix("base."))
    return spec


def _check_not_shadowed(spec: StudySpec, item: str, key: str) -> None:
    """Refuse a ``--set base.K=V`` that an override would silently undo."""
    def hits(overrides: dict[str, Any]) -> list[str]:
        return [k for k in overrides if k == key or key.startswith(k + ".") or k.startswith(key + ".")]

    where = hits(spec.overrides)
    if not where and all(hits(v.overrides) for v in spec.variants):
        where = sorted({k for v in spec.variants for k in hits(v.overrides)})
    if where:
        raise VitreduceError(f"--set {item!r} would have no effect: the spec overrides {', '.join(where)} for "
                             f"every run; use --set overrides.{item.removeprefix('base.')} instead")


def parse_spec(tree: dict[str, Any], source: str = "study spec") -> StudySpec:
    """Validate a spec tree whose ``base`` is a mapping; one VitreduceError naming every bad key."""
    try:
        return StudySpec.model_validate(tree)
    except ValidationError as err:
        problems = [_describe(e) for e in err.errors()]
        raise VitreduceError(f"invalid study spec ({source}):\n  " + "\n  ".join(problems)) from None


def _read_tree(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise VitreduceError(f"{path}: 'extends' goes round in a circle ({' -> '.join(map(str, seen))})")
    tree = read_yaml(path)
    base = tree.get("base")
    if isinstance(base, str | list):
        files = [base] if isinstance(base, str) else base
        if not files or not all(isinstance(f, str) for f in files):
            raise VitreduceError(f"{path}: base must be a path, a list of paths, or a mapping")
        tree["base"] = {}
        for name in files:
            tree["base"] = merge(tree["base"], read_yaml(path.parent / name))
    elif base is not None and not isinstance(base, dict):
        raise VitreduceError(f"{path}: base must be a train config path (relative to the spec), a list of "
                             f"paths, or a mapping; got {base!r}")
    parents = tree.pop("extends", None)
    if parents is not None:
        parents = [parents] if isinstance(parents, str) else parents
        if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
            raise VitreduceError(f"{path}: extends must be a study spec path (relative to this file) or a list")
        inherited: dict[str, Any] = {}
        for parent in parents:
            inherited = merge(inherited, _read_tree(path.parent / parent, (*seen, path)))
        if "variants" in tree and "baseline" not in tree:
            inherited.pop("baseline", None)  # new variants: the inherited baseline may be gone; default to the first
        tree = merge(inherited, tree)
    return tree


def _apply_set(tree: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    head, _, rest = key.strip().partition(".")
    if sep and head == "overrides" and rest:  # keep the dotted key flat, as in the spec file
        probe: dict[str, Any] = {}
        apply_override(probe, f"value={text}")
        tree["overrides"] = {**(tree.get("overrides") or {}), rest: probe["value"]}
        return
    if sep and head == "variants":
        raise VitreduceError(f"--set {item!r}: variants cannot be set from the command line; edit the spec")
    if sep and head in TrainConfig.model_fields and head not in StudySpec.model_fields:
        raise VitreduceError(f"--set {item!r}: {head} is a train-config key; use --set overrides.{key.strip()}=...")
    apply_override(tree, item)


def _describe(error: dict[str, Any]) -> str:
    loc = [str(p) for p in error["loc"]]
    key = ".".join(loc)
    if error["type"] == "extra_forbidden":
        model = VariantSpec if loc[0] == "variants" else StudySpec
        valid = list(model.model_fields)
        close = difflib.get_close_matches(loc[-1], valid, n=2, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        return f"{key}: unknown key; {hint}valid keys here: {', '.join(valid)}"
    if error["type"] == "missing":
        return f"{key}: required, not set"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] != "value_error":
        message += f" (got {error.get('input')!r})"
    return f"{key}: {message}" if key else message  # model-level messages name their keys


def spec_tree(spec: StudySpec) -> dict[str, Any]:
    """The resolved spec as written to study.yaml."""
    return spec.model_dump(mode="json")


# ---------------------------------------------------------------------------------------------------
# Expansion into runs


@dataclass(frozen=True)
class RunPlan:
    """One run of a study: a variant at a seed, its directory and its validated config."""

    variant: str
    seed: int
    run_dir: Path
    tree: dict[str, Any]  # base, then the study's overrides, then the variant's, then the seed
    config: TrainConfig

    @property
    def label(self) -> str:
        return f"{self.variant}/seed{self.seed}"


def set_key(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted ``key`` in a nested tree (a mapping value merges into a mapping already there)."""
    *parents, leaf = key.split(".")
    node = tree
    for depth, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise VitreduceError(f"override {key}: {'.'.join(parents[: depth + 1])} is a value, not a section")
        node = child
    value = copy.deepcopy(value)
    node[leaf] = merge(node[leaf], value) if isinstance(value, dict) and isinstance(node.get(leaf), dict) else value


def run_tree(spec: StudySpec, variant: VariantSpec, seed: int) -> dict[str, Any]:
    tree = copy.deepcopy(spec.base)
    for overrides in (spec.overrides, variant.overrides):
        for key, value in overrides.items():
            set_key(tree, key, value)
    tree["seed"] = seed
    return tree


def study_dir_of(spec: StudySpec, out: str | os.PathLike | None = None) -> Path:
    return Path(out or spec.out or Path("runs") / "studies" / spec.name)


def expand(spec: StudySpec, study_dir: str | os.PathLike) -> list[RunPlan]:
    """Every run (variants in order, then seeds), each config validated; one error lists every bad variant."""
    plans, problems = [], []
    for variant in spec.variants:
        for seed in spec.seeds:
            try:
                tree = run_tree(spec, variant, seed)
                config = validate(tree, source=f"study {spec.name}, variant {variant.name!r}")
            except VitreduceError as err:
                problems.append(str(err))
                break  # the other seeds of this variant fail the same way
            plans.append(RunPlan(variant.name, seed, Path(study_dir) / RUNS / variant.name / f"seed{seed}",
                                 tree, config))
    if problems:
        raise VitreduceError("\n".join(problems))
    return plans


# ---------------------------------------------------------------------------------------------------
# Checks before any run starts


def preflight(spec: StudySpec, plans: list[RunPlan]) -> None:
    """Build every distinct model on the meta device and check every dataset root: all problems at once."""
    problems = []

    def who(variants: list[str]) -> str:
        return "all variants" if len(variants) == len(spec.variants) > 1 else f"variant(s) {', '.join(variants)}"

    for model, variants in _distinct(plans, lambda p: p.config.model):
        try:
            _check_model(model)
        except (ValueError, TypeError, AssertionError, RuntimeError) as err:  # VitreduceError is a ValueError
            problems.append(f"{who(variants)}: model {model.name} ({model.reduction}): {err}")
    for data, variants in _distinct(plans, lambda p: (p.config.data, p.config.synth)):
        if not Path(data[0].root).expanduser().is_dir() and data[1] is None:
            problems.append(f"{who(variants)}: data.root {data[0].root} is not a folder; point it at your dataset "
                            "with --set base.data.root=/path/to/data")
    if spec.throughput and len(_distinct(plans, lambda p: p.config.model.model_copy(update={"reduction": ""}))) > 1:
        problems.append("throughput: the variants differ in more than model.reduction, so one throughput.json "
                        "cannot profile them; profile each model with `vitreduce profile`")
    if problems:
        raise VitreduceError(f"study {spec.name} cannot start:\n  " + "\n  ".join(problems))


def _distinct(plans: list[RunPlan], key) -> list[tuple[Any, list[str]]]:
    """The distinct values of ``key(plan)`` (pydantic models or tuples of them), each with its variants."""
    groups: dict[str, tuple[Any, list[str]]] = {}
    for plan in plans:
        value = key(plan)
        parts = value if isinstance(value, tuple) else (value,)
        ident = json.dumps([p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts],
                           sort_keys=True)
        variants = groups.setdefault(ident, (value, []))[1]
        if plan.variant not in variants:
            variants.append(plan.variant)
    return list(groups.values())


def _check_model(model: ModelConfig) -> None:
    """Build the model (and its reduction) on the meta device: shapes and reductions checked, no memory used."""
    if model.init_checkpoint is not None:
        if not Path(model.init_checkpoint).is_file():
            raise VitreduceError(f"model.init_checkpoint {model.init_checkpoint} does not exist")
        return
    from vitreduce.reduction.models import create_model
    from vitreduce.reduction.spec import ReductionSpec, Step

    # keep=magnitude needs real weights; keep=first gives the same shapes.
    spec = ReductionSpec.parse(model.reduction)
    spec = ReductionSpec(tuple(Step(s.strategy, {**s.params, "keep": "first"}) if s.params.get("keep") == "magnitude"
                               else s for s in spec.steps))
    create_model(model.name, reduction=spec, device="meta", **model.timm_kwargs())


def prepare_study_dir(study_dir: Path, spec: StudySpec) -> None:
    """Refuse a study directory made from a spec that changes any run; write study.yaml."""
    saved = study_dir / SPEC_FILE
    if saved.is_file():
        try:
            old = parse_spec(yaml.safe_load(saved.read_text()) or {}, source=str(saved))
        except (yaml.YAMLError, VitreduceError) as err:
            raise VitreduceError(f"{saved} cannot be read back ({err}); use another --out") from None
        changed = spec_differences(old, spec)
        if changed:
            raise VitreduceError(f"{study_dir} holds a study made from a different spec; use another --out, or "
                                 "the same spec.\n  " + "\n  ".join(changed))
    elif study_dir.is_dir() and any(study_dir.iterdir()):
        raise VitreduceError(f"{study_dir} is not empty and holds no {SPEC_FILE}; choose another --out")
    text = yaml.safe_dump(spec_tree(spec), sort_keys=False)
    if not saved.is_file() or saved.read_text() != text:
        rundir.write_text(saved, text)


def spec_differences(old: StudySpec, new: StudySpec) -> list[str]:
    """What a new spec changes in a study: its name, baseline, runs added or removed, run configs changed."""
    lines = [f"{key}: {getattr(old, key)} -> {getattr(new, key)}" for key in ("name", "baseline", "nproc_per_node")
             if getattr(old, key) != getattr(new, key)]
    runs = [{(v.name, s): run_tree(spec, v, s) for v in spec.variants for s in spec.seeds} for spec in (old, new)]
    for what, a, b in (("runs removed", runs[0], runs[1]), ("runs added", runs[1], runs[0])):
        extra = [f"{v}/seed{s}" for v, s in a if (v, s) not in b]
        if extra:
            lines.append(f"{what}: {', '.join(extra)}")
    where: dict[str, list[str]] = {}
    common = [k for k in runs[1] if k in runs[0]]
    for v, s in common:
        for line in changed_keys(runs[0][v, s], runs[1][v, s]):
            if not line.startswith("seed:"):
                where.setdefault(line, []).append(f"{v}/seed{s}")
    for line, labels in where.items():
        lines.append(f"{line} ({'all runs' if len(labels) == len(common) else ', '.join(labels)})")
    return lines


def ensure_synth_data(plans: list[RunPlan]) -> None:
    """Generate each built-in dataset a study needs once, up front (parallel runs would race to make it)."""

    for (data, synth), _ in _distinct(plans, lambda p: (p.config.data, p.config.synth)):
        if synth is None:
            continue
        root = Path(data.root).expanduser()
        root.parent.mkdir(parents=True, exist_ok=True)
        with open(root.parent / f".{root.name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # a second study making the same dataset waits for the first
            with contextlib.redirect_stdout(sys.stderr):  # its "generating ..." line is progress, not a result
                ensure_synth(root, synth)


def prepare_runs(plans: list[RunPlan]) -> dict[str, str]:
    """Each run's status ("new", "resume", "done"); config.yaml written for every unfinished one.

    A run directory made with another config is refused here, before any run starts (``rundir.inspect``).
    """
    starts = {p.label: rundir.inspect(p.run_dir, p.config).status for p in plans}
    for plan in plans:
        if starts[plan.label] != "done":
            rundir.begin(plan.run_dir, plan.config)  # before the lock file: the engine wants config.yaml first
    return starts


