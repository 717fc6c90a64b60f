"""Statistics of a variant against the baseline, at two evidence levels.

Seed level (does a difference survive retraining?): the paired t-test over seeds with the t-based
confidence interval of the mean difference; vitreduce.statistics.family adjusts its p-values across a family
and turns them into verdicts. Image level (do these two trained models differ on this test set?): per
seed, the paired bootstrap CI of the top-1 difference and McNemar's exact test; pooled over seeds, the
cluster bootstrap over images and the clustered McNemar test (clusters = images, since every seed scores
the same images). Image-level results describe the trained models, never the variant.

Differences are always variant minus baseline, in percentage points. Every sentence about a result comes
from the computed p-value or interval (the `describe_*` helpers), never from the size of a difference.
Everything here takes arrays and returns typed records; reading predictions.csv is the report's
(vitreduce.report.compare).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps

from vitreduce.errors import VitreduceError
from vitreduce.statistics.pvalue import fmt_p
from vitreduce.statistics.sample import Sample

DEFAULT_ALPHA = 0.05
DEFAULT_RESAMPLES = 2000
DEFAULT_BOOTSTRAP_SEED = 0
MIN_SEEDS = 3  # below this the t-test line carries a warning


# ---------------------------------------------------------------------------------------------------
# Paired t-test over seeds


@dataclass(frozen=True)
class TTest:
    """Paired t-test of per-seed values (variant minus baseline); fields are None where undefined."""

    n: int
    df: int | None
    mean_diff: float | None
    t: float | None
    p: float | None  # two-sided, unadjusted
    warning: str | None
    differences: tuple[float, ...] = ()  # per seed, variant minus baseline
    sd: float | None = None  # sample sd (ddof=1) of the differences
    confidence: float = 1 - DEFAULT_ALPHA
    ci_low: float | None = None  # t-based interval of the mean difference
    ci_high: float | None = None
    mean_baseline: float | None = None  # over the paired seeds only, beside the difference they make
    mean_variant: float | None = None


def paired_ttest(baseline: Sequence[float], variant: Sequence[float], *,
                 confidence: float = 1 - DEFAULT_ALPHA) -> TTest:
    """Two-sided paired t-test and the t-based CI; `baseline[i]` and `variant[i]` are the same seed's values."""
    a, b = np.asarray(baseline, dtype=float), np.asarray(variant, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values must be two equal-length 1-D sequences, got {a.shape} and {b.shape}")
    n = a.size
    d = b - a
    mean = float(d.mean()) if n else None
    base = functools.partial(TTest, n, differences=tuple(float(x) for x in d), confidence=confidence,
                             mean_baseline=float(a.mean()) if n else None, mean_variant=float(b.mean()) if n else None)
    if n < 2:
        return base(None, mean, None, None, f"n={n} paired seed(s): a t-test needs at least 2")
    warning = (f"only n={n} paired seeds (df={n - 1}): almost no power and normality cannot be checked, "
               "weak evidence whatever the p-value") if n < MIN_SEEDS else None
    sample = Sample(tuple(float(x) for x in d))
    if sample.degenerate:
        # Identical differences make t infinite (scipy then says p=0): the test is undefined, not significant.
        note = "the differences are identical across seeds, so t is undefined"
        return base(n - 1, mean, None, None, f"{warning}; {note}" if warning else note, sd=sample.sd)
    sd = sample.sd
    res = sps.ttest_rel(b, a)
    low, high = res.confidence_interval(confidence)
    return base(n - 1, mean, float(res.statistic), float(res.pvalue), warning, sd=sd, ci_low=float(low),
                ci_high=float(high))


def describe_ttest(t: TTest) -> str:
    """The numbers of a seed-level test, no verdict (the verdict is the family's, on the adjusted p)."""
    diff = "n/a" if t.mean_diff is None else f"{t.mean_diff:+.2f} pp"
    if t.p is None:
        return f"mean paired difference {diff} over n={t.n} seeds; not testable ({t.warning})"
    text = (f"mean paired difference {diff} over n={t.n} seeds, {t.confidence:.0%} CI [{t.ci_low:+.2f}, "
            f"{t.ci_high:+.2f}] pp (t-based, unadjusted), paired t-test t={t.t:.3g}, df={t.df}, "
            f"raw p={fmt_p(t.p, 1 - t.confidence)}")
    return f"{text}; warning: {t.warning}" if t.warning else text


# ---------------------------------------------------------------------------------------------------
# Per-image paired tests


@dataclass(frozen=True)
class Bootstrap:
    """Percentile bootstrap interval of the top-1 difference (variant minus baseline, pp)."""

    diff: float
    low: float
    high: float
    confidence: float
    n_images: int  # distinct images (the resampled unit)
    n_resamples: int
    seed: int
    n_seeds: int = 1  # seeds' outcomes carried with each image


def paired_bootstrap_ci(correct_base: np.ndarray, correct_variant: np.ndarray, *,
                        n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_BOOTSTRAP_SEED,
                        confidence: float = 1 - DEFAULT_ALPHA) -> Bootstrap:
    """Paired bootstrap over images of the difference in top-1.

    `correct_*` are booleans of shape (N,) or (N, S): row i is image i, columns are seeds scored on
    the same image. A resample draws N rows with replacement, keeping a row's seeds together. The
    statistic depends on a row only through e_i = sum_s (variant_is - base_is), so a resample is a
    multinomial draw of how often each distinct e value occurs: exact, and O(n_resamples) memory.
    """
    a, b, e = _image_differences(correct_base, correct_variant)
    if n_resamples < 1 or not 0 < confidence < 1:
        raise VitreduceError(f"need n_resamples >= 1 and 0 < confidence < 1, got {n_resamples}, {confidence}")
    n_rows = a.shape[0]
    values, counts = np.unique(e, return_counts=True)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n_rows, counts / n_rows, size=n_resamples)  # (R, K)
    diffs = draws @ values * (100.0 / a.size)  # (R,) pp
    tail = (1 - confidence) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    return Bootstrap(diff=float(e.sum() * 100.0 / a.size), low=float(low), high=float(high), confidence=confidence,
                     n_images=n_rows, n_resamples=n_resamples, seed=seed, n_seeds=a.size // n_rows)


def _image_differences(correct_base, correct_variant) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, e): the outcomes as (N, S) booleans and e_i = sum_s (variant_is - base_is), shape (N,)."""
    a = np.asarray(correct_base, dtype=bool)
    b = np.asarray(correct_variant, dtype=bool)
    if a.shape != b.shape or a.ndim not in (1, 2) or a.shape[0] == 0:
        raise ValueError(f"need two equal non-empty (N,) or (N, S) arrays, got {a.shape} and {b.shape}")
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    return a, b, (b.astype(np.int64) - a.astype(np.int64)).sum(axis=1)


def describe_bootstrap(bs: Bootstrap) -> str:
    """An image-level statement about the trained models on this test set, never a verdict on the variant."""
    ci = f"{bs.confidence:.0%} CI [{bs.low:+.2f}, {bs.high:+.2f}] pp"
    if bs.low > 0 or bs.high < 0:
        return f"these trained models differ on this test set ({ci} excludes 0)"
    return f"no difference shown between these trained models on this test set ({ci} includes 0)"


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test: a two-sided binomial test (p=1/2) on the discordant pairs."""

    n_pairs: int
    base_only: int  # baseline right, variant wrong
    variant_only: int  # variant right, baseline wrong
    p: float
    test: str = "McNemar exact"


def mcnemar_exact(correct_base: np.ndarray, correct_variant: np.ndarray) -> McNemar:
    a = np.asarray(correct_base, dtype=bool).ravel()
    b = np.asarray(correct_variant, dtype=bool).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes differ in size: {a.size} and {b.size}")
    base_only, variant_only = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    discordant = base_only + variant_only
    p = 1.0 if discordant == 0 else float(sps.binomtest(variant_only, discordant, 0.5).pvalue)
    return McNemar(int(a.size), base_only, variant_only, min(1.0, p))


@dataclass(frozen=True)
class ClusteredMcNemar:
    """McNemar's test for clustered pairs (Durkalski et al. 2003), clusters = images scored in every seed.

    With e_i = (variant right, baseline wrong) - (baseline right, variant wrong) counted over image i's
    seeds, X = (sum_i e_i)^2 / sum_i e_i^2, referred to chi-square with 1 df (large-sample). One seed
    gives the uncorrected McNemar chi-square; repeating a seed adds no evidence, unlike concatenating
    (image, seed) pairs as if independent.
    """

    n_images: int
    n_seeds: int
    base_only: int  # (image, seed) pairs: baseline right, variant wrong
    variant_only: int
    chi2: float
    p: float
    test: str = "clustered McNemar (clusters = images)"


def clustered_mcnemar(correct_base: np.ndarray, correct_variant: np.ndarray) -> ClusteredMcNemar:
    """The clustered McNemar test on (N, S) paired outcomes (row = image, column = seed)."""
    a, b, e = _image_differences(correct_base, correct_variant)
    base_only, variant_only = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    denom = float(np.sum(e.astype(float) ** 2))
    chi2 = 0.0 if denom == 0 else float(e.sum()) ** 2 / denom
    p = 1.0 if denom == 0 else float(sps.chi2.sf(chi2, 1))
    return ClusteredMcNemar(a.shape[0], a.shape[1], base_only, variant_only, chi2, p)


def describe_mcnemar(m: McNemar | ClusteredMcNemar, alpha: float = DEFAULT_ALPHA) -> str:
    """An image-level statement (unadjusted p) about the trained models on this test set."""
    if m.p < alpha:
        return f"these trained models differ on this test set ({m.test} p={fmt_p(m.p, alpha)} < {alpha:g})"
    return f"no difference shown between these trained models on this test set ({m.test} p={fmt_p(m.p, alpha)})"


# ---------------------------------------------------------------------------------------------------
# The typed records of a comparison of a variant with the baseline


@dataclass(frozen=True)
class PairedTest:
    """Per-image tests of one seed (or pooled over seeds) for one model kind."""

    label: str  # "seed 0" or "pooled (2 seeds)"
    top1_base: float
    top1_variant: float
    bootstrap: Bootstrap
    mcnemar: McNemar | ClusteredMcNemar  # exact per seed; clustered by image when pooled


@dataclass(frozen=True)
class KindComparison:
    kind: str  # raw or ema
    top1: TTest  # paired t-test of final top-1 over seeds
    p2f: TTest  # paired t-test of peak-to-final over seeds
    per_seed: list[PairedTest] = field(default_factory=list)
    pooled: PairedTest | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Comparison:
    variant: str
    baseline: str
    alpha: float
    seeds: list[int]  # seeds finished in both
    kinds: dict[str, KindComparison]  # "raw", and "ema" where both have an EMA
