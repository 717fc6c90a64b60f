"""Divergence as a stability outcome: per variant, how many of its runs diverged and when, and Fisher's exact
test of its divergence rate against the baseline's, Holm-adjusted across the variants (an exploratory family).

Diverged runs are left out of every accuracy figure (a run that stopped producing finite numbers has no final
accuracy, and an earlier epoch's would flatter it); this family is where they count (docs/metrics.md).
"""
from __future__ import annotations

from vitreduce.statistics.counts import fisher_exact
from vitreduce.statistics.family import adjust_pvalues

DIVERGENCE_TEST = "Fisher exact (diverged of finished or diverged runs), Holm across the variants"


def divergence_tests(summary: dict, baseline: str, alpha: float) -> None:
    """Add ``vs_baseline`` (p, adjusted p, shown) to each other variant's ``outcomes.divergence``."""
    if baseline not in summary:
        return
    base = summary[baseline]["outcomes"]["divergence"]
    others = [v for v in summary if v != baseline]
    raw = [fisher_exact(summary[v]["outcomes"]["divergence"]["diverged"], summary[v]["outcomes"]["divergence"]["of"],
                        base["diverged"], base["of"]) for v in others]
    for variant, p, p_adj in zip(others, raw, adjust_pvalues(raw, "holm"), strict=True):
        summary[variant]["outcomes"]["divergence"]["vs_baseline"] = {
            "test": DIVERGENCE_TEST, "p": p, "p_adjusted": p_adj, "alpha": alpha, "family_size": len(others),
            "differs": p_adj < alpha}


def diverged_variants(summary: dict) -> dict[str, dict]:
    """{variant: its outcomes.divergence} for the variants with a diverged run."""
    return {v: e["outcomes"]["divergence"] for v, e in summary.items()
            if "outcomes" in e and e["outcomes"]["divergence"]["diverged"]}


def describe_divergence(d: dict) -> str:
    """'1 of 4 runs (seed 2 at epoch 6)'."""
    where = ", ".join(f"seed {s} at epoch {e}" for s, e in zip(d["seeds"], d["epochs"], strict=True))
    return f"{d['diverged']} of {d['of']} runs" + (f" ({where})" if where else "")


def not_counted(summary: dict) -> dict[str, int]:
    """{status: runs} of the unfinished and unreadable runs that no figure counts, over the study."""
    counted = [e for e in summary.values() if "outcomes" in e]
    return {s: n for s in ("unfinished", "unreadable")
            if (n := sum(e["outcomes"][s] - (e["unfinished_included"] if s == "unfinished" else 0) for e in counted))}
