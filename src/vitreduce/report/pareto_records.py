"""summary.json's ``study.pareto`` as records: accuracy against cost per base model, the descriptive fits and
the degree statement's test (vitreduce.report.pareto computes them; vitreduce.report.records holds the rest of
summary.json's records)."""
from __future__ import annotations

from dataclasses import dataclass

from vitreduce.statistics.family import ModelKind
from vitreduce.statistics.noninferiority import LackOfFit, Step


@dataclass(frozen=True)
class KindStats:
    """Final top-1 of one model kind over a variant's seeds."""

    n: int
    mean: float | None
    std: float | None
    seeds: tuple[int, ...]


@dataclass(frozen=True)
class ParetoPoint:
    """A variant of one base model: its reduction, the fraction of MLP parameters it keeps, costs, accuracy."""

    reduction: str | None
    strategy: str
    kept: float | None
    params: int | None
    macs_linear: int | None
    throughput_img_s: float | None
    raw: KindStats
    ema: KindStats

    def cost(self, name: str) -> float | None:
        """The cost ``name`` (a key of vitreduce.report.pareto.COSTS)."""
        return {"params": self.params, "macs_linear": self.macs_linear, "throughput_img_s": self.throughput_img_s}[name]

    def model_kind(self, kind: ModelKind) -> KindStats:
        return self.raw if kind == "raw" else self.ema


@dataclass(frozen=True)
class DegreeTest:
    """The degree statement: the fixed-sequence non-inferiority test over a series' swept degrees."""

    method: str
    margin: float
    alpha: float
    steps: tuple[Step, ...]
    most_reduced: str | None
    most_reduced_kept: float | None
    swept_min_kept: float


@dataclass(frozen=True)
class Fit:
    """The descriptive accuracy-vs-degree fit of one series (a reduction strategy with the baseline)."""

    strategy: str
    variants: tuple[str, ...]
    kept: tuple[float, ...]
    coefficients: tuple[float, ...]
    coefficients_low: tuple[float, ...]
    coefficients_high: tuple[float, ...]
    grid: tuple[float, ...]  # kept, descending
    mean: tuple[float, ...]  # the fit on the grid, and its bootstrap band
    low: tuple[float, ...]
    high: tuple[float, ...]
    baseline_mean: float
    lack_of_fit: LackOfFit
    kind: str
    degree: DegreeTest


@dataclass(frozen=True)
class ParetoGroup:
    """One base model: its baseline, variants, fronts ({kind: {cost: variants}}) and fits."""

    baseline: str | None
    variants: dict[str, ParetoPoint]
    front: dict[str, dict[str, tuple[str, ...]]]
    fits: tuple[Fit, ...]


@dataclass(frozen=True)
class Pareto:
    costs: dict[str, str]
    fit_model: str
    interval: float
    resamples: int
    bootstrap_seed: int
    alpha: float
    margin: float
    series: int  # fitted series over every base model: the degree tests' family
    groups: dict[str, ParetoGroup]
