"""The ``sweep:`` section of a study spec: base models x a grid of reduction specs, expanded into named variants.

A sweep is shorthand for variants a user would otherwise write one by one::

    sweep:
      models:                                    # one or more base models
        - {name: vit_small_patch16_224, label: vit_small}
        - {name: vit_base_patch16_224, label: vit_base, args: {drop_path_rate: 0.1}}  # args: model.<key>
      reductions:                                # each entry: a reduction string or a grid
        - shallow: {ratio: [1, 0.75, 0.5, 0.375, 0.25]}
        - grouped: {size: [1, 2, 3, 4, 6, 12]}
        - {grouped: {size: [2]}, shallow: {ratio: [0.5, 0.25]}}   # two strategies: their composition
        - "thin:ratio=0.5"

A grid expands to the product of its values; a grid naming several strategies composes them (one
variant per combination, steps joined with '+' as in ``model.reduction``). A step that keeps every MLP
parameter (``shallow``/``thin`` ratio 1, ``grouped`` size 1 with the default scale) is no reduction, so
ratio 1 and size 1 are the base model itself, the variant ``<label>.baseline``. Repeats (after the
reduction strings are made canonical) are dropped. Variant names are ``<label>.<reduction>``, e.g.
``vit_small.shallow-0.5``, ``vit_small.grouped-2-shallow-0.25``, ``vit_small.grouped-2-cycle``.
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from vitreduce.errors import VitreduceError
from vitreduce.numbers import format_macs, macs_unit
from vitreduce.reduction.spec import STRATEGIES, ReductionSpec, Step

BASELINE = "baseline"  # the name of each base model's unreduced variant: <label>.baseline
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # no '.': it separates the label from the reduction
_MAIN = {"grouped": "size", "shallow": "ratio", "thin": "ratio"}  # the parameter that sets the degree
# Per strategy, the parameters at which the step changes nothing (the base model).
# A grid entry of more reductions than this is refused before it is expanded (a typo such as a range of
# 10^6 ratios would otherwise plan for minutes); a sweep this wide is not a study one can train.
MAX_GRID = 10_000
DEFAULT_MAX_RUNS = 1000  # runs a study may make unless its spec says max_runs (the shipped studies make at most 66)
_IDENTITY = {"grouped": {"size": 1, "scale": ("auto", 1.0)}, "shallow": {"ratio": 1.0}, "thin": {"ratio": 1.0}}


class SweepModel(BaseModel):
    """One base model of a sweep: its timm name, the label its variants start with, model.<key> overrides."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(min_length=1)  # model.name, e.g. vit_small_patch16_224
    label: str | None = None  # default: the name
    args: dict[str, Any] = {}  # model.<key>: value for every variant of this model (depth, drop_path_rate...)

    @field_validator("label")
    @classmethod
    def _label(cls, value: str | None) -> str | None:
        if value is not None and not _LABEL.fullmatch(value):
            raise ValueError(f"{value!r} must be letters, digits, '_' or '-' (no '.'), e.g. vit_small")
        return value

    @field_validator("args")
    @classmethod
    def _args(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, where in (("name", "the model's name"), ("reduction", "the sweep's reductions")):
            if key in value:
                raise ValueError(f"{key!r} is set by {where}; remove it from args")
        return value

    @property
    def tag(self) -> str:
        return self.label or self.name


Grid = dict[str, dict[str, Any]]  # strategy -> {key: value or [values]}


def _named(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value  # `- vit_small_patch16_224` names a model


class SweepSpec(BaseModel):
    """The ``sweep:`` section: ``models`` x ``reductions`` (reduction strings or grids)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    models: list[Annotated[SweepModel, BeforeValidator(_named)]] = Field(min_length=1)  # or just a model name
    reductions: list[str | Grid] = Field(min_length=1)

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[SweepModel]) -> list[SweepModel]:
        tags = [m.tag for m in value]
        for tag in tags:
            if not _LABEL.fullmatch(tag):
                raise ValueError(f"model {tag!r} needs a label: letters, digits, '_' or '-' (no '.'), "
                                 "e.g. {name: ..., label: vit_small}")
        repeated = sorted({t for t in tags if tags.count(t) > 1})
        if repeated:
            raise ValueError(f"labels must be unique, repeated: {', '.join(repeated)}; give each model a label")
        return value

    @field_validator("reductions")
    @classmethod
    def _reductions(cls, value: list[str | Grid]) -> list[str | Grid]:
        for index, entry in enumerate(value):
            try:
                grid_specs(entry)
            except VitreduceError as err:
                raise ValueError(f"entry {index}: {err}") from None
        return value


@dataclass(frozen=True)
class SweptVariant:
    """One variant of a sweep: its name, base model label, canonical reduction and train-config overrides."""

    name: str
    label: str
    reduction: str
    overrides: dict[str, Any]


def grid_specs(entry: str | Grid) -> list[ReductionSpec]:
    """The canonical reduction specs of one ``reductions`` entry, identity steps removed, in grid order."""
    if isinstance(entry, str):
        return [_without_identity(ReductionSpec.parse(entry))]
    if not isinstance(entry, dict) or not entry:
        raise VitreduceError("a reduction entry is a string (e.g. 'shallow:ratio=0.5') or a grid "
                             "(e.g. {shallow: {ratio: [1, 0.5, 0.25]}})")
    axes: list[list[str]] = []
    for strategy, params in entry.items():
        if strategy not in STRATEGIES:
            raise VitreduceError(f"unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
        if not isinstance(params, dict):
            raise VitreduceError(f"{strategy}: give its keys and values, e.g. {{{_MAIN[strategy]}: [..]}}")
        for key, values in params.items():
            if key not in STRATEGIES[strategy]:
                raise VitreduceError(f"{strategy}.{key}: unknown key; valid keys: {', '.join(STRATEGIES[strategy])}")
            values = values if isinstance(values, list) else [values]
            if not values:
                raise VitreduceError(f"{strategy}.{key}: the list of values is empty")
            axes.append([f"{strategy}:{key}={v}" for v in values])
    if math.prod(len(axis) for axis in axes) > MAX_GRID:
        raise VitreduceError(f"the grid makes {math.prod(len(axis) for axis in axes):,} reductions "
                             f"({' x '.join(str(len(axis)) for axis in axes)}), more than {MAX_GRID:,}; "
                             "give fewer values")
    specs = []
    for combination in itertools.product(*axes):
        steps: dict[str, list[str]] = {}
        for item in combination:
            strategy, _, pair = item.partition(":")
            steps.setdefault(strategy, []).append(pair)
        specs.append(_without_identity(ReductionSpec.parse("+".join(f"{s}:{','.join(p)}" for s, p in steps.items()))))
    return specs


def _is_identity(step: Step) -> bool:
    for key, neutral in _IDENTITY[step.strategy].items():
        if step.params[key] not in (neutral if isinstance(neutral, tuple) else (neutral,)):
            return False
    return True


def _without_identity(spec: ReductionSpec) -> ReductionSpec:
    return ReductionSpec(tuple(s for s in spec.steps if not _is_identity(s)))


def reduction_name(spec: ReductionSpec) -> str:
    """A folder-safe name of a reduction: ``baseline``, ``shallow-0.5``, ``grouped-2-cycle-shallow-0.25``."""
    if not spec:
        return BASELINE
    parts = []
    for step in spec.steps:
        main = _MAIN[step.strategy]
        part = [step.strategy, f"{step.params[main]:g}"]
        for key, (default, _) in STRATEGIES[step.strategy].items():
            value = step.params[key]
            if key != main and value != default:
                part.append(str(value) if isinstance(value, str) else f"{key}{value:g}")
        parts.append("-".join(part))
    return "-".join(parts)


def sweep_size(sweep: SweepSpec) -> int:
    """How many variants the sweep makes at most (before repeated reductions are merged), without making them."""
    per_model = 1  # the baseline
    for entry in sweep.reductions:
        if isinstance(entry, str):
            per_model += 1
        else:
            per_model += math.prod(len(v) if isinstance(v, list) else 1
                                   for params in entry.values() for v in params.values())
    return per_model * len(sweep.models)


def check_size(listed: int, sweep: SweepSpec | None, seeds: int, max_runs: int) -> None:
    """Refuse (ValueError, in the spec's validation) a study of more than ``max_runs`` runs, counted from the
    listed variants, the sweep's size and the seeds before anything is expanded (planning a huge study takes
    minutes and memory)."""
    variants = listed + (sweep_size(sweep) if sweep else 0)
    runs = variants * seeds
    if runs > max_runs:
        raise ValueError(f"the spec makes up to {runs:,} runs ({variants:,} variant(s) x {seeds} seed(s)), more than "
                         f"max_runs ({max_runs:,}): check the sweep and the seeds, or confirm the size with "
                         f"max_runs: {runs} in the spec (or --set max_runs={runs})")


def expand_sweep(sweep: SweepSpec) -> list[SweptVariant]:
    """Every variant of a sweep: per base model (in order) its baseline, then each distinct reduction."""
    specs = dict.fromkeys([ReductionSpec()])  # ordered and distinct
    for entry in sweep.reductions:
        specs.update(dict.fromkeys(grid_specs(entry)))
    variants = []
    for model in sweep.models:
        common = {"model.name": model.name, **{f"model.{k}": v for k, v in model.args.items()}}
        for spec in specs:
            variants.append(SweptVariant(f"{model.tag}.{reduction_name(spec)}", model.tag, str(spec),
                                         {**common, "model.reduction": str(spec)}))
    return variants


def sweep_labels(tree: dict[str, Any]) -> dict[str, str]:
    """{variant: base model label} of a resolved spec tree's sweep (study.yaml); {} without a valid sweep."""
    section = tree.get("sweep") if isinstance(tree, dict) else None
    if not section:
        return {}
    try:
        return {v.name: v.label for v in expand_sweep(SweepSpec.model_validate(section))}
    except (ValueError, VitreduceError):  # pydantic's ValidationError is a ValueError
        return {}


def variant_costs(plans, costs: bool = True) -> tuple[list[str], list[list[str]]]:
    """Per variant of ``plans`` (study.plan.RunPlan): seeds, reduction and, with ``costs``, unique parameters and
    MACs, from ``reduction.accounting`` on a model built on the meta device (no memory, no arithmetic: instant
    once torch is imported; without ``costs`` nothing is built and torch is not imported)."""
    seeds: dict[str, list[int]] = {}
    first = {}
    for plan in plans:
        seeds.setdefault(plan.variant, []).append(plan.seed)
        first.setdefault(plan.variant, plan)
    rows = [[variant, str(len(seeds[variant])), plan.config.model.reduction] for variant, plan in first.items()]
    if not costs:
        return ["variant", "seeds", "reduction"], rows
    from vitreduce.reduction.accounting import describe
    from vitreduce.reduction.models import create_model

    for row, plan in zip(rows, first.values(), strict=True):
        model = plan.config.model
        spec = ReductionSpec.parse(model.reduction).with_shapes_only()  # keep=magnitude needs no real weights here
        if model.init_checkpoint is not None:
            row += ["from init_checkpoint", "", "", ""]
            continue
        d = describe(create_model(model.name, reduction=spec, device="meta", **model.timm_kwargs()))
        row += [f"{d.params:,}", f"{d.mlp_params:,}", d.macs_linear, d.macs_total]
    divisor, unit = macs_unit(m for row in rows for m in row[5:] if isinstance(m, int))
    rows = [row[:5] + [format_macs(m, divisor) if isinstance(m, int) else m for m in row[5:]] for row in rows]
    return ["variant", "seeds", "reduction", "params (unique)", "MLP params", f"{unit} (linear)",
            f"{unit} (incl. attention)"], rows
