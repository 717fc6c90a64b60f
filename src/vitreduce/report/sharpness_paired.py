"""Sharpness against the baseline, seed by seed: the paired difference (variant minus baseline, same seed)
of each measure comparable across variants, a paired t-test over seeds, and one exploratory family of
those tests adjusted with the study's correction; and the figure of those differences.

Exploratory by construction: the measures are taken on a small fixed subset, several measures and
checkpoints are tested, and no study spec names them as its primary question.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitreduce.report.analysis_files import ANALYSED_CHECKPOINTS, read_run_analysis
from vitreduce.report.plots import label_axes, legend_outside, new_figure, ordered_variants, save_figure, variant_colors
from vitreduce.report.records import (
    ExploratoryFamily,
    PairedRecord,
    SharpnessRecord,
    SharpnessVsBaseline,
    VariantEntry,
)
from vitreduce.report.runs import StudyRuns
from vitreduce.sharpness.measures import per_parameter
from vitreduce.statistics.family import StatisticsConfig, adjust_pvalues
from vitreduce.statistics.paired import TTest, paired_ttest

# The measures comparable across variants (the others change with the parameter count or a rescaling).
# (name, axis label with its unit, measure): the loss and ASAM's rise are cross-entropy; tr(H) / P is its
# second derivative per (unitless) weight, averaged over the parameters.
COMPARABLE = (("loss", "(cross-entropy)", lambda r: r.get("loss")),
              ("trace / parameter", "(cross-entropy / weight^2)",
               lambda r: per_parameter(r.get("trace"), r.get("parameters"))),
              ("ASAM sharpness", "(cross-entropy)", lambda r: r.get("asam_sharpness")))
FIGURE = "sharpness_difference.png"
# Each measure's key in summary.json's `sharpness_vs_baseline` and results.csv (those of `sharpness`).
KEYS = {"loss": "loss", "trace / parameter": "trace_per_param", "ASAM sharpness": "asam"}
FAMILY = ("every variant x analysed checkpoint x measure comparable across variants (loss, trace / parameter, "
          "ASAM sharpness) with a seed paired with the baseline; an undefined test counts in the family as p = 1; "
          "exploratory")


@dataclass(frozen=True)
class SharpnessTest:
    variant: str
    checkpoint: str
    measure: str
    test: TTest
    p_adjusted: float | None = None
    seeds: tuple[int, ...] = ()  # the seeds both measured, in the order of test.differences


def _by_seed(study: StudyRuns, analyses: dict, variant: str, which: str, measure) -> dict[int, float]:
    values = {}
    for run in study.variants.get(variant, []):
        result = analyses[run.run_dir].get(which)
        value = None if result is None else measure(result)
        if value is not None and np.isfinite(value):
            values[run.seed] = float(value)
    return values


def sharpness_tests(study: StudyRuns, config: StatisticsConfig) -> list[SharpnessTest]:
    """Every variant x checkpoint x comparable measure with a paired seed; the family adjusted together."""
    tests = []
    analyses = {run.run_dir: read_run_analysis(run.run_dir) for runs in study.variants.values() for run in runs}
    for variant in ordered_variants(study)[1:] if study.baseline in study.variants else []:
        for which in ANALYSED_CHECKPOINTS:
            for name, _, measure in COMPARABLE:
                base, other = (_by_seed(study, analyses, v, which, measure) for v in (study.baseline, variant))
                seeds = sorted(set(base) & set(other))
                if seeds:
                    t = paired_ttest([base[s] for s in seeds], [other[s] for s in seeds], confidence=1 - config.alpha)
                    tests.append(SharpnessTest(variant, which, name, t, seeds=tuple(seeds)))
    # As in the seed-level families, an undefined test enters as p = 1: the family keeps its size.
    adjusted = adjust_pvalues([1.0 if t.test.p is None else t.test.p for t in tests], config.correction)
    return [SharpnessTest(t.variant, t.checkpoint, t.measure, t.test, None if t.test.p is None else p, t.seeds)
            for t, p in zip(tests, adjusted, strict=True)]


def reading(t: SharpnessTest, alpha: float) -> str:
    """What an exploratory test suggests: the report's and summary.json's wording."""
    if t.p_adjusted is None:
        return f"not testable ({t.test.warning})"
    if t.p_adjusted >= alpha:
        return "no evidence of a difference"
    return "higher than the baseline" if t.test.mean_diff > 0 else "lower than the baseline"


def sharpness_vs_baseline(summary: dict[str, VariantEntry], tests: list[SharpnessTest], baseline: str,
                          config: StatisticsConfig) -> dict[str, VariantEntry]:
    """The entries with each tested variant's paired sharpness tests (``sharpness_vs_baseline``, beside
    ``vs_baseline``); ``tests`` are sharpness_tests' (one computation per report, for the table and figure too)."""
    family = ExploratoryFamily(FAMILY, len(tests), config.correction, config.alpha)
    out = dict(summary)
    for variant in {t.variant for t in tests}:
        records = tuple(SharpnessRecord(t.checkpoint, KEYS[t.measure], t.measure, t.test.n, t.seeds,
                                        PairedRecord.of(t.test, t.p_adjusted, reading(t, config.alpha)))
                        for t in tests if t.variant == variant)
        out[variant] = dataclasses.replace(summary[variant], sharpness_vs_baseline=SharpnessVsBaseline(
            baseline, config.alpha, 1 - config.alpha, config.correction, "exploratory", family, records))
    return out


def sharpness_difference_figure(study: StudyRuns, fig_dir: Path, tests: list[SharpnessTest]) -> list[tuple[str, str]]:
    """Per comparable measure, the per-seed paired differences from the baseline (dots), their mean and t-based
    CI (black; the tests' confidence), for each variant and checkpoint; nothing without a paired seed."""
    if not tests:
        return []
    colors = variant_colors(study)
    slots = sorted({(t.variant, t.checkpoint) for t in tests}, key=lambda s: (ordered_variants(study).index(s[0]),
                                                                               s[1]))
    fig = new_figure(max(9.0, 1.2 * len(slots) * len(COMPARABLE)), 4.6)
    for ax, (name, unit, _) in zip(fig.subplots(1, len(COMPARABLE)), COMPARABLE, strict=True):
        for x, (variant, which) in enumerate(slots):
            t = next((t.test for t in tests if (t.variant, t.checkpoint, t.measure) == (variant, which, name)), None)
            if t is None:
                continue
            d = np.array(t.differences)
            jitter = np.linspace(-0.12, 0.12, d.size) if d.size > 1 else np.zeros(1)
            ax.scatter(x + jitter, d, color=colors[variant], s=20, zorder=3, label=f"{variant} minus {study.baseline}")
            low, high = (t.ci_low, t.ci_high) if t.ci_low is not None else (t.mean_diff, t.mean_diff)
            ax.errorbar([x + 0.3], [t.mean_diff], yerr=[[t.mean_diff - low], [high - t.mean_diff]], fmt="s",
                        color="k", markersize=4, capsize=3, zorder=4)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xticks(range(len(slots)), [f"{v}\n{w}" for v, w in slots], fontsize=8)
        ax.set_xlim(-0.6, len(slots) - 0.2)
        label_axes(ax, xlabel="variant, checkpoint", ylabel=f"variant minus baseline {unit}",
                   title=name)
    fig.suptitle(f"sharpness, paired difference from {study.baseline} (same seed)")
    legend_outside(fig)
    save_figure(fig, fig_dir / FIGURE)
    return [(FIGURE, "Sharpness, paired difference from the baseline (variant minus baseline, same seed) of the "
                     f"measures comparable across variants: one dot per seed, black = mean and t-based "
                     f"{tests[0].test.confidence:.0%} CI "
                     "(none where n < 2 or the differences are identical). Larger = sharper than the baseline. "
                     "Exploratory (see the sharpness section's paired tests).")]
