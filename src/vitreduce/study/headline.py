"""The report's headline: a few generated sentences saying what the study supports and what it does not,
and the compact table beside them.

Both are pure functions of summary.json's variant entries (each variant's ``vs_baseline.seed_level``
records, the confirmatory family first; docs/metrics.md). Only the confirmatory family's seed-level
paired t-tests are stated as results; every other figure in the report is called exploratory.
"""
from __future__ import annotations

from vitreduce.statistics.pvalue import fmt_p
from vitreduce.study.family import BETTER, METRIC_TITLE, NOT_TESTABLE, WORSE
from vitreduce.study.power import MAX_SEEDS
from vitreduce.study.runs import KIND_TITLE

NA = "n/a"
EXPLORATORY = ("Everything else in this report (the other metrics and model kinds, the image-level tests on these "
               "trained models, training stability, sharpness) is exploratory: it suggests what to test next, it is "
               "not a result.")


def confirmatory(summary: dict) -> dict[str, dict]:
    """{variant: its confirmatory seed-level record} for every variant compared with the baseline."""
    out = {}
    for variant, entry in summary.items():
        for record in (entry.get("vs_baseline") or {}).get("seed_level", []):
            if record["evidence"] == "confirmatory":
                out[variant] = record
    return out


def _range(values: list, fmt) -> str:
    low, high = min(values), max(values)
    return fmt(low) if fmt(low) == fmt(high) else f"{fmt(low)}-{fmt(high)}"


def _pp(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 10 else f"{x:.2f}"


def _seeds(d: dict) -> int:
    return MAX_SEEDS + 1 if d["more_than_max"] else d["seeds_needed"]


def _fmt_seeds(n: int) -> str:
    return f"more than {MAX_SEEDS:,}" if n > MAX_SEEDS else f"{n:,}"


def _level(record: dict) -> str:
    family = record["family"]
    pct = f"{family['alpha'] * 100:g}%"
    size = f"{family['size']} comparison{'s' if family['size'] != 1 else ''}"
    if family["correction"] == "bh":
        return f"at a {pct} false discovery rate (Benjamini-Hochberg, {size})"
    return f"at the family-wise {pct} level (Holm, {size})"


def _verdict_clause(variant: str, r: dict, baseline: str) -> str:
    ci = "" if r["ci_low"] is None else (f", {r['confidence']:.0%} CI [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] pp")
    return (f"{variant} is {r['verdict']} than the baseline ({baseline}) by {r['mean_diff']:+.2f} pp{ci}, "
            f"adjusted p={fmt_p(r['p_adjusted'], r['family']['alpha'])}")


def headline(summary: dict, baseline: str) -> list[str]:
    """The headline sentences, generated from the confirmatory family's verdicts and detectable effects."""
    records = confirmatory(summary)
    if not records:
        return [f"No variant could be compared with the baseline ({baseline}): it, or every other variant, has no "
                "finished runs, so this study supports no claim about the variants.", EXPLORATORY]
    first = next(iter(records.values()))
    what = f"{METRIC_TITLE[first['metric']]} of the {KIND_TITLE[first['kind']]}"
    testable = {v: r for v, r in records.items() if r["verdict"] != NOT_TESTABLE}
    ns = [r["n"] for r in records.values()]
    seeds = f"With {_range(ns, str)} paired seed{'s' if max(ns) != 1 else ''} per variant"
    sentences = []
    if testable:
        decided = [_verdict_clause(v, r, baseline) for v, r in testable.items() if r["verdict"] in (BETTER, WORSE)]
        if decided:
            rest = len(testable) - len(decided)
            tail = f"; the other {rest} show no evidence of a difference" if rest else ""
            sentences.append(f"{seeds}, in {what} {_level(first)}: {'; '.join(decided)}{tail}.")
        else:
            which = "no tested variant" if len(testable) < len(records) else "no variant"
            sentences.append(f"{seeds}, {which} differs from the baseline ({baseline}) in {what} {_level(first)}.")
    untested = [v for v in records if v not in testable]
    if untested:
        sentences.append(f"Not testable against the baseline ({baseline}) in {what}, so no claim either way: "
                         + "; ".join(f"{v} ({_why_untested(records[v])})" for v in untested) + ".")
    sentences += _power_sentence(testable.values())
    return [*sentences, EXPLORATORY]


def _why_untested(r: dict) -> str:
    reason = r["detectable"]["reason"] or r["warning"] or "the t-test is undefined"
    return reason if reason.startswith("n=") else f"n={r['n']} paired seeds, {reason}"


def _power_sentence(records) -> list[str]:
    d = [r["detectable"] for r in records if r["detectable"]["reason"] is None]
    if not d:
        return []
    effect = f"{d[0]['effect']:+.2f} pp"
    return [f"At 80% power these seeds could only have detected differences of "
            f"{_range([x['min_effect'] for x in d], _pp)} pp; detecting {effect} would take "
            f"{_range([_seeds(x) for x in d], _fmt_seeds)} paired seeds per variant."]


def headline_table(summary: dict, baseline: str, primary: str) -> tuple[list[str], list[list[str]]]:
    """variant, n, params, the primary metric's mean ± sd, difference vs baseline with CI, adjusted p, verdict."""
    kind, metric = primary.split("_", 1)
    records = confirmatory(summary)
    rows = []
    for variant, e in summary.items():
        k, r = e[kind], records.get(variant)
        mean, sd = k[f"{metric}_mean"], k[f"{metric}_std"]
        value = NA if mean is None else f"{mean:.2f}" if sd is None else f"{mean:.2f} ± {sd:.2f}"
        if r is None or r["mean_diff"] is None:
            diff = "(baseline)" if variant == baseline else NA
        else:
            diff = f"{r['mean_diff']:+.2f}" + ("" if r["ci_low"] is None else
                                               f" [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]")
        rows.append([variant, str(k["n"]), NA if e["params"] is None else f"{e['params'] / 1e6:.2f}M", value, diff,
                     NA if r is None or r["p_adjusted"] is None else fmt_p(r["p_adjusted"], r["family"]["alpha"]),
                     "" if r is None else r["verdict"]])
    title = f"{METRIC_TITLE[metric]}, {KIND_TITLE[kind]}"
    return (["variant", "n", "params", f"{title} (mean ± sd)", "difference vs baseline (pp) [CI]", "adjusted p",
             "verdict"], rows)
