"""Families of seed-level tests, their multiple-comparison correction, and the verdict words.

A study's **confirmatory family** is every variant-vs-baseline comparison on one primary metric (final
top-1 of the EMA model by default, of the raw model when the runs have no EMA; the spec's
``statistics.primary`` or ``vitreduce report --primary`` names another, ``probe_miou`` among them: the
segmentation probe's mIoU of the model the study's analysis probed). Every other metric and model
kind is an **exploratory** family of its own. Each family's p-values are adjusted together (Holm by
default, Benjamini-Hochberg on request), and only the seed-level paired t-test's adjusted p decides the
words "better", "worse" or "no evidence of a difference" (docs/metrics.md).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from vitreduce.errors import VitreduceError
from vitreduce.statistics.paired import Comparison, TTest
from vitreduce.statistics.power import Detectable, detectable
from vitreduce.statistics.settings import (  # noqa: F401 (the names the report imports from here)
    DEFAULT_CORRECTION,
    DEFAULT_EFFECT,
    DEFAULT_MARGIN,
    PRIMARY_CHOICES,
    PROBE_MIOU,
    Correction,
    StatisticsConfig,
)

ModelKind = Literal["raw", "ema"]  # the trained weights, or their exponential moving average
MODEL_KINDS: tuple[ModelKind, ...] = ("raw", "ema")
KIND_TITLE: dict[ModelKind, str] = {"raw": "raw model", "ema": "EMA model"}  # as tables and figures name them
CORRECTION_NAME = {"holm": "Holm (family-wise error rate)", "bh": "Benjamini-Hochberg (false discovery rate)"}
SeedMetric = Literal["top1_final", "p2f", "miou"]
METRIC_TITLE: dict[str, str] = {"top1_final": "final top-1", "p2f": "peak-to-final", "miou": "segmentation-probe mIoU"}
HIGHER_IS_BETTER: dict[str, bool] = {"top1_final": True, "p2f": False, "miou": True}  # less degradation is better
BETTER, WORSE, NO_EVIDENCE, NOT_TESTABLE = "better", "worse", "no evidence of a difference", "not testable"
NEGLIGIBLE = "negligible difference"  # shown, but smaller than the smallest difference of interest
NEGLIGIBLE_CODE = 2
VERDICT_OF_CODE = {1: BETTER, -1: WORSE, 0: NO_EVIDENCE, NEGLIGIBLE_CODE: NEGLIGIBLE}


def adjust_pvalues(p: Sequence[float], method: Correction) -> list[float]:
    """Adjusted p-values of one family, in the input order (Holm step-down, or Benjamini-Hochberg)."""
    values = np.asarray(p, dtype=float)
    if values.ndim != 1 or np.any((values < 0) | (values > 1)) or np.any(np.isnan(values)):
        raise ValueError(f"p-values must be a 1-D sequence in [0, 1], got {p}")
    if method not in CORRECTION_NAME:
        raise VitreduceError(f"correction must be one of holm, bh; got {method!r}")
    if values.size == 0:
        return []
    return [float(x) for x in holm_bh_many(values[None, :], method)[0]]  # the one implementation, one row


def holm_bh_many(p: np.ndarray, method: Correction) -> np.ndarray:
    """Adjusted p-values of many families at once: ``p`` is (studies, m), each row one family."""
    m = p.shape[1]
    order = np.argsort(p, axis=1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=1)  # (S, m) ascending
    if method == "holm":
        stepped = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * ranked), axis=1)
    else:
        stepped = np.minimum.accumulate((m / np.arange(1, m + 1) * ranked)[:, ::-1], axis=1)[:, ::-1]
        stepped = np.minimum(stepped, 1.0)
    adjusted = np.empty_like(stepped)
    np.put_along_axis(adjusted, order, stepped, axis=1)
    return adjusted


def verdict_word(mean_diff: float | None, p_adjusted: float | None, alpha: float, metric: str,
                 min_effect: float = 0.0) -> str:
    """better / worse / negligible / no evidence of a difference, from the adjusted p, the sign of the difference
    and the smallest difference of interest (the scalar form of verdicts_many, which decides)."""
    if p_adjusted is None or mean_diff is None:
        return NOT_TESTABLE
    code = int(verdicts_many(np.array([mean_diff]), np.array([p_adjusted]), alpha, metric, min_effect)[0])
    return VERDICT_OF_CODE[code]


def verdicts_many(mean_diff: np.ndarray, p_adjusted: np.ndarray, alpha: float, metric: str,
                  min_effect: float = 0.0) -> np.ndarray:
    """Verdict codes over arrays: 1 better, -1 worse, 0 no evidence, 2 negligible. Only an adjusted p strictly
    below alpha decides (p = alpha is no evidence), and a difference smaller than ``min_effect`` (pp: one test
    image, or the spec's smallest effect of interest) is called negligible, neither better nor worse."""
    sign = np.sign(mean_diff) * (1 if HIGHER_IS_BETTER[metric] else -1)
    decided = np.where(np.abs(mean_diff) < min_effect, NEGLIGIBLE_CODE, sign)
    return np.where(p_adjusted < alpha, decided, 0).astype(int)


@dataclass(frozen=True)
class Family:
    """One family of seed-level comparisons, adjusted together."""

    name: str  # e.g. "confirmatory: ema_top1_final"
    evidence: Literal["confirmatory", "exploratory"]
    kind: str  # raw or ema
    metric: str  # top1_final, p2f, or miou (the segmentation probe's)
    correction: Correction
    alpha: float
    variants: tuple[str, ...]  # the comparisons (each variant vs the baseline) in the family

    @property
    def size(self) -> int:
        return len(self.variants)

    @property
    def first_rank_alpha(self) -> float:
        """The level the smallest p must clear: alpha / m for Holm and for Benjamini-Hochberg alike."""
        return self.alpha / max(1, self.size)

    def describe(self) -> str:
        return (f"{self.evidence} family {self.kind}_{self.metric}: the {self.size} comparison(s) of each variant "
                f"with the baseline on {METRIC_TITLE[self.metric]} of the {KIND_TITLE[self.kind]}, "
                f"{CORRECTION_NAME[self.correction]} at alpha={self.alpha:g}")

    def record(self) -> dict:
        return {"name": self.name, "evidence": self.evidence, "kind": self.kind, "metric": self.metric,
                "correction": self.correction, "alpha": self.alpha, "size": self.size,
                "variants": list(self.variants), "first_rank_alpha": self.first_rank_alpha}


def resolve_primary(primary: str | None, kinds_per_comparison: Sequence[set[str]]) -> str:
    """The primary metric: the one named, else EMA final top-1 when every comparison has an EMA, else raw."""
    if primary is None:
        has_ema = bool(kinds_per_comparison) and all("ema" in k for k in kinds_per_comparison)
        return "ema_top1_final" if has_ema else "raw_top1_final"
    if primary not in PRIMARY_CHOICES:
        raise VitreduceError(f"primary metric {primary!r} is not one of {', '.join(PRIMARY_CHOICES)}")
    if primary == PROBE_MIOU:
        return primary  # the probed model's kind is the analysis's (the report checks the study has probes)
    kind = primary.split("_", 1)[0]
    if kinds_per_comparison and not any(kind in k for k in kinds_per_comparison):
        other = "raw" if kind == "ema" else "ema"
        raise VitreduceError(f"primary metric {primary}: no comparison has {'an EMA' if kind == 'ema' else 'a raw'} "
                             "model on both sides (runs without EMA); "
                             f"name {other}_{primary.split('_', 1)[1]} instead (statistics.primary or --primary)")
    return primary


def family_keys(primary: str, probe_kind: str = "ema") -> list[tuple[str, str, str]]:
    """(kind, metric, evidence) of every family, the confirmatory one first. The probe's mIoU is a family here
    only as the primary metric (``probe_kind``: the model it probed); otherwise the report's dense-transfer
    section holds it as an exploratory family of its own."""
    keys = [(k, m) for k in ("ema", "raw") for m in ("top1_final", "p2f")]
    kind, metric = (probe_kind, "miou") if primary == PROBE_MIOU else primary.split("_", 1)
    return [(kind, metric, "confirmatory")] + [(k, m, "exploratory") for k, m in keys if (k, m) != (kind, metric)]


def primary_title(primary: str, probe_kind: str = "ema") -> str:
    """The primary metric in words, e.g. "final top-1 of the EMA model"."""
    kind, metric, _ = family_keys(primary, probe_kind)[0]
    return f"{METRIC_TITLE[metric]} of the {KIND_TITLE[kind]}"


# ---------------------------------------------------------------------------------------------------
# The seed-level results of a study, family by family


@dataclass(frozen=True)
class SeedResult:
    """One variant-vs-baseline comparison in one family: the t-test, its adjusted p and verdict, and power."""

    family: Family
    variant: str
    test: TTest
    p_adjusted: float | None  # None where the test is undefined (it entered the correction as p = 1)
    verdict: str  # better / worse / negligible difference / no evidence of a difference / not testable
    detectable: Detectable
    min_effect: float = 0.0  # pp: below this a shown difference is negligible (one image, or the spec's)
    min_effect_source: str = "none stated"

    def record(self) -> dict:
        """The summary.json form (docs/metrics.md)."""
        t = self.test
        return {"family": self.family.record(), "level": "seed", "evidence": self.family.evidence,
                "kind": self.family.kind, "metric": self.family.metric, "n": t.n, "differences": list(t.differences),
                "mean_diff": t.mean_diff, "sd": t.sd, "confidence": t.confidence, "ci_low": t.ci_low,
                "ci_high": t.ci_high, "t": t.t, "df": t.df, "p": t.p, "p_adjusted": self.p_adjusted,
                "correction": self.family.correction, "alpha": self.family.alpha, "verdict": self.verdict,
                "warning": t.warning, "detectable": dataclasses.asdict(self.detectable),
                "mean_baseline": t.mean_baseline, "mean_variant": t.mean_variant, "min_effect": self.min_effect,
                "min_effect_source": self.min_effect_source}


def smallest_difference(comparison: Comparison, config: StatisticsConfig) -> tuple[float, str]:
    """(pp, why) below which a difference is negligible: one test image (the resolution of top-1 on this test
    set, where predictions.csv says how many images) or the spec's ``min_effect``, whichever is larger."""
    images = [p.bootstrap.n_images for kc in comparison.kinds.values() for p in kc.per_seed]
    one_image = 100.0 / min(images) if images else 0.0
    if config.min_effect >= one_image:
        return config.min_effect, ("statistics.min_effect" if config.min_effect else "none stated")
    return one_image, f"one test image of {min(images):,}"


def seed_level(comparisons: Sequence[Comparison], config: StatisticsConfig,
               probe: Sequence[tuple[str, TTest]] = (), probe_kind: str = "ema") -> list[SeedResult]:
    """Every family's results, the confirmatory family first; `config.primary` already resolved. ``probe``: each
    variant's paired mIoU test of the segmentation probe of its ``probe_kind`` model (for primary probe_miou)."""
    results = []
    smallest = {c.variant: smallest_difference(c, config) for c in comparisons}
    # mIoU has no one-test-image resolution: only the spec's smallest difference of interest applies to it
    stated = (config.min_effect, "statistics.min_effect" if config.min_effect else "none stated")
    for kind, metric, evidence in family_keys(config.primary or "raw_top1_final", probe_kind):
        members = list(probe) if metric == "miou" else [
            (c.variant, getattr(c.kinds[kind], "top1" if metric == "top1_final" else "p2f"))
            for c in comparisons if kind in c.kinds]
        if not members:
            continue
        family = Family(f"{evidence}: {kind}_{metric}", evidence, kind, metric, config.correction, config.alpha,
                        tuple(v for v, _ in members))
        # An undefined test enters as p = 1: the family keeps its size, so no comparison is dropped quietly.
        adjusted = adjust_pvalues([1.0 if t.p is None else t.p for _, t in members], config.correction)
        for (variant, t), p_adj in zip(members, adjusted, strict=True):
            p_adj = None if t.p is None else p_adj
            least, why = stated if metric == "miou" else smallest[variant]
            results.append(SeedResult(family, variant, t, p_adj,
                                      verdict_word(t.mean_diff, p_adj, config.alpha, metric, least),
                                      detectable(list(t.differences), family.first_rank_alpha, config.effect),
                                      least, why))
    return results
