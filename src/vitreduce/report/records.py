"""The records summary.json holds: one ``VariantEntry`` per variant and the study-level ``StudyResults``.

Every section of the report works on these records, summary.json is written from them and read back into
them (vitreduce.report.summary_file, through vitreduce.report.codec); the statistics' own records
(``SeedResult``, ``KindComparison``, ``TTest``, ``Detectable``, ``Step``, ``LackOfFit``) are held as they
are. A field's name is its key in summary.json (docs/metrics.md); ``flat`` fields write a mean and sd as
``<name>_mean`` and ``<name>_std`` beside the others, as summary.json always has.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated

from vitreduce.report.codec import Flat, Layout, flat, omitted
from vitreduce.report.outcome import STATUSES, Outcome
from vitreduce.report.pareto_records import Pareto
from vitreduce.statistics.family import ModelKind, SeedResult
from vitreduce.statistics.paired import KindComparison, TTest
from vitreduce.statistics.sample import mean_std


@dataclass(frozen=True)
class Spread:
    """Mean and sample sd (ddof=1) over seeds; None where undefined (no value; one value for the sd)."""

    mean: float | None
    std: float | None

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Spread:
        """Over the finite values among ``values``."""
        mean, std, _ = mean_std(values)
        return cls(mean, std)


# ---------------------------------------------------------------------------------------------------
# What became of the runs


@dataclass(frozen=True)
class RunOutcome(Flat):
    seed: int | None
    outcome: Outcome = flat("")


@dataclass(frozen=True)
class DivergenceTest:
    """Fisher's exact test of a variant's divergence rate against the baseline's (vitreduce.report.stability)."""

    test: str
    p: float
    p_adjusted: float
    alpha: float
    family_size: int
    differs: bool


@dataclass(frozen=True)
class DivergenceCount:
    """Divergence as a stability outcome: diverged of the runs that finished or diverged, and where."""

    diverged: int
    of: int
    epochs: tuple[int, ...]
    seeds: tuple[int | None, ...]
    vs_baseline: DivergenceTest | None = omitted()


@dataclass(frozen=True)
class Outcomes:
    """Every run of a variant by outcome; ``included``: the runs every figure is over."""

    listed: int
    finished: int
    diverged: int
    unfinished: int
    unreadable: int
    included: int
    runs: tuple[RunOutcome, ...]
    divergence: DivergenceCount

    @classmethod
    def of(cls, runs: Sequence[tuple[int | None, Outcome]], included: Sequence[int | None]) -> Outcomes:
        """The outcomes of a variant's runs (seed, outcome), ``included`` the seeds every figure is over."""
        counts = {s: sum(o.status == s for _, o in runs) for s in STATUSES}
        diverged = [(seed, o.divergence) for seed, o in runs if o.divergence is not None]
        return cls(len(runs), *(counts[s] for s in STATUSES), len(included),
                   tuple(RunOutcome(seed, o) for seed, o in runs),
                   DivergenceCount(len(diverged), counts["finished"] + counts["diverged"],
                                   tuple(d.epoch for _, d in diverged), tuple(s for s, _ in diverged)))

    def count(self, status: str) -> int:
        return {"finished": self.finished, "diverged": self.diverged, "unfinished": self.unfinished,
                "unreadable": self.unreadable}[status]


# ---------------------------------------------------------------------------------------------------
# Figures over seeds


@dataclass(frozen=True)
class KindSummary(Flat):
    """One model kind's (raw or EMA) accuracy figures over the included runs that have it."""

    n: int
    top1_final: Spread = flat()
    top5_final: Spread = flat()
    top1_peak: Spread = flat()
    peak_epoch: Spread = flat()
    p2f: Spread = flat()


@dataclass(frozen=True)
class SharpnessSummary(Flat):
    """The sharpness measures comparable across variants at one checkpoint, over the runs analysed."""

    n: int
    loss: Spread = flat()
    trace_per_param: Spread = flat()
    asam: Spread = flat()
    top_eigenvalue: Spread = flat()


@dataclass(frozen=True)
class Throughput:
    """throughput.json's figures of a variant, and its ratio to the baseline of its base model."""

    median: float
    min: float | None
    max: float | None
    device: str | None
    batch_size: int | None
    precision: str | None
    base_model: str | None = None  # None in files written before studies of several models
    ratio_to_baseline: float | None = None  # only where the [min, max] ranges do not overlap
    ratio_basis: str | None = None  # why (not)
    ratio_against: str | None = None  # the variant the ratio is to


# ---------------------------------------------------------------------------------------------------
# Against the baseline

# A SeedResult as its record() writes it: the t-test's fields beside the others, without the variant's name
# (its entry's key: vitreduce.report.summary_file gives it back).
SeedResultRecord = Annotated[SeedResult, Layout(flat={"test": ""}, given={"variant": ""}, write=SeedResult.record)]


@dataclass(frozen=True)
class VsBaseline:
    """The seed-level families' results of a variant (confirmatory first) and its comparison with the baseline.

    ``primary``, ``correction``, ``effect`` and ``image_level`` are None, and ``seed_level`` empty, in a
    summary of vitreduce 0.1.0 (before families)."""

    baseline: str
    alpha: float
    seeds: tuple[int, ...]
    primary: str | None
    correction: str | None
    effect: float | None
    seed_level: tuple[SeedResultRecord, ...]
    image_level: str | None
    raw: KindComparison
    ema: KindComparison | None = omitted()  # where both sides have an EMA

    @property
    def kinds(self) -> dict[str, KindComparison]:
        return {"raw": self.raw, **({"ema": self.ema} if self.ema else {})}

    def confirmatory(self) -> SeedResult | None:
        return next((r for r in self.seed_level if r.family.evidence == "confirmatory"), None)

    def result(self, kind: str, metric: str) -> SeedResult | None:
        return next((r for r in self.seed_level if (r.family.kind, r.family.metric) == (kind, metric)), None)


@dataclass(frozen=True)
class ExploratoryFamily:
    definition: str
    size: int
    correction: str
    alpha: float


@dataclass(frozen=True)
class PairedRecord:
    """An exploratory paired t-test against the baseline as summary.json keeps it (sharpness, probe mIoU); the
    record holding it names its paired seeds and their number."""

    differences: tuple[float, ...]
    mean_diff: float | None
    sd: float | None
    ci_low: float | None
    ci_high: float | None
    t: float | None
    df: int | None
    p: float | None
    p_adjusted: float | None
    reading: str
    warning: str | None

    @classmethod
    def of(cls, test: TTest, p_adjusted: float | None, reading: str) -> PairedRecord:
        return cls(test.differences, test.mean_diff, test.sd, test.ci_low, test.ci_high, test.t, test.df, test.p,
                   p_adjusted, reading, test.warning)


@dataclass(frozen=True)
class SharpnessRecord(Flat):
    checkpoint: str
    measure: str  # summary.json's key of the measure (loss, trace_per_param, asam)
    name: str  # as the report names it
    n: int
    seeds: tuple[int, ...]
    test: PairedRecord = flat("")


@dataclass(frozen=True)
class SharpnessVsBaseline:
    baseline: str
    alpha: float
    confidence: float
    correction: str
    evidence: str
    family: ExploratoryFamily
    tests: tuple[SharpnessRecord, ...]


@dataclass(frozen=True)
class ProbeFamily:
    """The probe's mIoU tests as one family: confirmatory where the study's primary metric is probe_miou."""

    definition: str
    evidence: str
    size: int
    correction: str
    alpha: float


@dataclass(frozen=True)
class ProbeRecord(Flat):
    baseline: str
    seeds: tuple[int, ...]
    n: int
    test: PairedRecord = flat("")
    family: ProbeFamily


@dataclass(frozen=True)
class Segmentation(Flat):
    """The segmentation probe's scores of a variant over its probed seeds, and its paired mIoU test."""

    seeds: tuple[int, ...]
    data: tuple[str, ...]
    evidence: str
    miou: Spread = flat()
    pixel_accuracy: Spread = flat()
    mean_accuracy: Spread = flat()
    miou_vs_baseline: ProbeRecord | None = omitted()


# ---------------------------------------------------------------------------------------------------
# A variant's entry


@dataclass(frozen=True)
class VariantEntry(Flat):
    """summary.json's entry of one variant: its runs, the model it trains, its figures over seeds and, for every
    variant but the baseline, its comparisons with the baseline. ``outcomes`` is None in a summary of
    vitreduce 0.1.0, which predates run outcomes."""

    n: int
    seeds: tuple[int | None, ...]
    unfinished_included: int
    outcomes: Outcomes | None
    model: str | None
    reduction: str | None
    params: int | list[int] | None
    mlp_params: int | list[int] | None
    unique_mlps: int | list[int] | None
    mlp_hidden: int | list[int] | None
    embed_dim: int | list[int] | None
    macs_linear: int | None
    macs_total: int | None
    num_classes: int | None
    epochs: int | None
    steps_trained: int | None
    ema_decay: float | None
    expansion: float | None
    loss_spikes: Spread = flat()
    step_spikes: Spread = flat()  # over the runs with a steps.jsonl
    raw: KindSummary
    ema: KindSummary
    throughput: Throughput | None
    throughput_img_s: float | None  # the median of ``throughput``
    sharpness: dict[str, SharpnessSummary]  # checkpoint -> its measures
    baseline: bool
    segmentation: Segmentation | None = omitted()  # the segmentation probe, where the study's analysis ran it
    vs_baseline: VsBaseline | None = omitted()
    sharpness_vs_baseline: SharpnessVsBaseline | None = omitted()

    def model_kind(self, kind: ModelKind) -> KindSummary:
        return self.raw if kind == "raw" else self.ema


# ---------------------------------------------------------------------------------------------------
# The study


@dataclass(frozen=True)
class StudyResults:
    """summary.json's study-level results; ``pareto`` is None where the report has no Pareto section.
    ``name`` and ``primary`` are None in a format 1 summary, which did not record them."""

    name: str | None
    baseline: str | None
    primary: str | None  # the confirmatory family's metric; None in a format 1 summary
    pareto: Pareto | None
