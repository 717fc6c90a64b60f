"""Divergence as a stability outcome: per variant, how many of its runs diverged and when, and Fisher's exact
test of its divergence rate against the baseline's, Holm-adjusted across the variants (an exploratory family).

Diverged runs are left out of every accuracy figure (a run that stopped producing finite numbers has no final
accuracy, and an earlier epoch's would flatter it); this family is where they count (docs/metrics.md).
"""
from __future__ import annotations

import dataclasses

from vitreduce.report.records import DivergenceCount, DivergenceTest, VariantEntry
from vitreduce.statistics.counts import fisher_exact
from vitreduce.statistics.family import adjust_pvalues

DIVERGENCE_TEST = "Fisher exact (diverged of finished or diverged runs), Holm across the variants"


def divergence_tests(summary: dict[str, VariantEntry], baseline: str, alpha: float) -> dict[str, VariantEntry]:
    """The entries with each other variant's divergence tested against the baseline's (``vs_baseline``)."""
    if baseline not in summary or summary[baseline].outcomes is None:
        return summary
    base = summary[baseline].outcomes.divergence
    others = [v for v, e in summary.items() if v != baseline and e.outcomes is not None]
    raw = [fisher_exact(summary[v].outcomes.divergence.diverged, summary[v].outcomes.divergence.of,
                        base.diverged, base.of) for v in others]
    out = dict(summary)
    for variant, p, p_adj in zip(others, raw, adjust_pvalues(raw, "holm"), strict=True):
        outcomes = summary[variant].outcomes
        tested = DivergenceTest(DIVERGENCE_TEST, p, p_adj, alpha, len(others), p_adj < alpha)
        divergence = dataclasses.replace(outcomes.divergence, vs_baseline=tested)
        out[variant] = dataclasses.replace(summary[variant],
                                           outcomes=dataclasses.replace(outcomes, divergence=divergence))
    return out


def diverged_variants(summary: dict[str, VariantEntry]) -> dict[str, DivergenceCount]:
    """{variant: its divergence count} for the variants with a diverged run."""
    return {v: e.outcomes.divergence for v, e in summary.items()
            if e.outcomes is not None and e.outcomes.divergence.diverged}


def describe_divergence(d: DivergenceCount) -> str:
    """'1 of 4 runs (seed 2 at epoch 6)'."""
    where = ", ".join(f"seed {s} at epoch {e}" for s, e in zip(d.seeds, d.epochs, strict=True))
    return f"{d.diverged} of {d.of} runs" + (f" ({where})" if where else "")


def not_counted(summary: dict[str, VariantEntry]) -> dict[str, int]:
    """{status: runs} of the unfinished and unreadable runs that no figure counts, over the study."""
    counted = [e for e in summary.values() if e.outcomes is not None]
    return {s: n for s in ("unfinished", "unreadable")
            if (n := sum(e.outcomes.count(s) - (e.unfinished_included if s == "unfinished" else 0) for e in counted))}
