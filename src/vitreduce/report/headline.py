"""The report's headline: a few generated sentences saying what the study supports and what it does not,
and the compact table beside them.

Both are pure functions of the variants' records (vitreduce.report.records.VariantEntry: each variant's
``vs_baseline.seed_level`` results, the confirmatory family first; docs/metrics.md). Only the confirmatory
family's seed-level paired t-tests are stated as results; every other figure in the report is called exploratory.
"""
from __future__ import annotations

from vitreduce.report.records import VariantEntry
from vitreduce.report.runs import KIND_TITLE
from vitreduce.report.stability import describe_divergence, diverged_variants, not_counted
from vitreduce.statistics.family import (
    BETTER,
    METRIC_TITLE,
    NEGLIGIBLE,
    NOT_TESTABLE,
    PROBE_MIOU,
    WORSE,
    SeedResult,
    family_keys,
)
from vitreduce.statistics.paired import MIN_SEEDS
from vitreduce.statistics.power import MAX_SEEDS, Detectable
from vitreduce.statistics.pvalue import fmt_p

NA = "n/a"
EXPLORATORY = ("Everything else in this report (the other metrics and model kinds, the image-level tests on these "
               "trained models, training stability, sharpness) is exploratory: it suggests what to test next, it is "
               "not a result.")


def confirmatory(summary: dict[str, VariantEntry]) -> dict[str, SeedResult]:
    """{variant: its confirmatory seed-level result} for every variant compared with the baseline."""
    return {variant: r for variant, entry in summary.items()
            if entry.vs_baseline and (r := entry.vs_baseline.confirmatory()) is not None}


def _range(values: list, fmt) -> str:
    low, high = min(values), max(values)
    return fmt(low) if fmt(low) == fmt(high) else f"{fmt(low)}-{fmt(high)}"


def _pp(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 10 else f"{x:.2f}"


def _seeds(d: Detectable) -> int:
    return MAX_SEEDS + 1 if d.more_than_max else d.seeds_needed


def _fmt_seeds(n: int) -> str:
    return f"more than {MAX_SEEDS:,}" if n > MAX_SEEDS else f"{n:,}"


def _level(record: SeedResult) -> str:
    family = record.family
    pct = f"{family.alpha * 100:g}%"
    size = f"{family.size} comparison{'s' if family.size != 1 else ''}"
    if family.correction == "bh":
        return f"at a {pct} false discovery rate (Benjamini-Hochberg, {size})"
    return f"at the family-wise {pct} level (Holm, {size})"


def _verdict_clause(variant: str, r: SeedResult, baseline: str) -> str:
    t = r.test
    ci = "" if t.ci_low is None else f", {t.confidence:.0%} CI [{t.ci_low:+.2f}, {t.ci_high:+.2f}] pp"
    return (f"{variant} is {r.verdict} than the baseline ({baseline}) by {t.mean_diff:+.2f} pp{ci}, "
            f"adjusted p={fmt_p(r.p_adjusted, r.family.alpha)}")


def headline(summary: dict[str, VariantEntry], baseline: str, primary: str | None = None) -> list[str]:
    """The headline sentences, generated from the confirmatory family's verdicts and detectable effects, with
    every caveat that applies to them: few seeds, negligible differences, diverged or uncounted runs, an EMA
    that contradicts its raw model or averages over more steps than the run had."""
    records = confirmatory(summary)
    if not records:
        why = ("no variant has segmentation-probe results on seeds the baseline's probe shares (the primary metric "
               f"{PROBE_MIOU}; the study's analysis probes finished runs)" if primary == PROBE_MIOU else
               "it, or every other variant, has no finished runs")
        return [f"No variant could be compared with the baseline ({baseline}): {why}, so this study supports no "
                "claim about the variants.", *_run_caveats(summary), EXPLORATORY]
    first = next(iter(records.values()))
    what = f"{METRIC_TITLE[first.family.metric]} of the {KIND_TITLE[first.family.kind]}"
    testable = {v: r for v, r in records.items() if r.verdict != NOT_TESTABLE}
    ns = [r.test.n for r in records.values()]
    seeds = f"With {_range(ns, str)} paired seed{'s' if max(ns) != 1 else ''} per variant"
    sentences = []
    if testable:
        decided = [_verdict_clause(v, r, baseline) for v, r in testable.items() if r.verdict in (BETTER, WORSE)]
        negligible = {v: r for v, r in testable.items() if r.verdict == NEGLIGIBLE}
        if decided:
            rest = len(testable) - len(decided) - len(negligible)
            tail = f"; the other {rest} show no evidence of a difference" if rest else ""
            sentences.append(f"{seeds}, in {what} {_level(first)}: {'; '.join(decided)}{tail}.")
        elif len(negligible) < len(testable):
            which = "no tested variant" if len(testable) < len(records) else "no variant"
            sentences.append(f"{seeds}, {which} differs from the baseline ({baseline}) in {what} {_level(first)}"
                             + (" by more than a negligible amount" if negligible else "") + ".")
        sentences += _negligible_sentence(negligible, what, baseline)
        sentences += _few_seeds_sentence(testable)
    untested = [v for v in records if v not in testable]
    if untested:
        sentences.append(f"Not testable against the baseline ({baseline}) in {what}, so no claim either way: "
                         + "; ".join(f"{v} ({_why_untested(records[v])})" for v in untested) + ".")
    sentences += _power_sentence(testable.values())
    sentences += _reversal_sentences(summary, first)
    sentences += _ema_horizon_sentences(summary)
    if primary == PROBE_MIOU:
        sentences.append(f"Classification top-1 (of both models) is exploratory here: the primary metric is {what}.")
    return [*sentences, *_run_caveats(summary), EXPLORATORY]


def _negligible_sentence(negligible: dict[str, SeedResult], what: str, baseline: str) -> list[str]:
    if not negligible:
        return []
    parts = [f"{v} by {r.test.mean_diff:+.2f} pp (adjusted p={fmt_p(r.p_adjusted, r.family.alpha)}; "
             f"smallest difference of interest {r.min_effect:.2f} pp: {r.min_effect_source})"
             for v, r in negligible.items()]
    return [f"Shown to differ from the baseline ({baseline}) in {what}, but by less than matters, so called neither "
            f"better nor worse: {'; '.join(parts)}."]


def _few_seeds_sentence(testable: dict[str, SeedResult]) -> list[str]:
    """The t-test's own warning where a verdict rests on fewer than MIN_SEEDS paired seeds."""
    few = {v: r for v, r in testable.items() if r.test.n < MIN_SEEDS}
    if not few:
        return []
    dfs = sorted({r.test.n - 1 for r in few.values()})
    return [f"Weak evidence whatever the p-value: {', '.join(few)} rest{'s' if len(few) == 1 else ''} on "
            f"{_range([r.test.n for r in few.values()], str)} paired seeds (df={'/'.join(map(str, dfs))}), with almost "
            "no power and no way to check the t-test's normality."]


def _reversal_sentences(summary: dict[str, VariantEntry], first: SeedResult) -> list[str]:
    """A variant whose raw and EMA models get opposite verdicts on the confirmatory metric."""
    out = []
    for variant, entry in summary.items():
        by_kind = {r.family.kind: r for r in (entry.vs_baseline.seed_level if entry.vs_baseline else ())
                   if r.family.metric == first.family.metric and r.verdict in (BETTER, WORSE)}
        if len(by_kind) == 2 and by_kind["raw"].verdict != by_kind["ema"].verdict:
            ema, raw = by_kind["ema"], by_kind["raw"]
            out.append(f"Reversal: {variant}'s EMA model is {ema.verdict} ({ema.test.mean_diff:+.2f} pp) but its raw "
                       f"model is {raw.verdict} ({raw.test.mean_diff:+.2f} pp) than the baseline's in "
                       f"{METRIC_TITLE[first.family.metric]}, so neither model's verdict stands for the variant.")
    return out


def _ema_horizon_sentences(summary: dict[str, VariantEntry]) -> list[str]:
    """A variant whose EMA averages over more optimizer steps than its runs trained."""
    out = []
    for variant, e in summary.items():
        decay, steps = e.ema_decay, e.steps_trained
        if decay is None or not steps or 1 / (1 - decay) <= steps or not e.ema.n:
            continue
        raw, ema = e.raw.top1_final.mean, e.ema.top1_final.mean
        lag = "" if raw is None or ema is None else f"; its final top-1 is {ema - raw:+.2f} pp from the raw model's"
        out.append(f"EMA horizon: {variant}'s EMA (decay {decay:g}) averages over about {1 / (1 - decay):,.0f} "
                   f"optimizer steps, more than the {steps:,} its runs trained, so it still carries its "
                   f"initialisation{lag}.")
    return out


def _run_caveats(summary: dict[str, VariantEntry]) -> list[str]:
    """Diverged runs (left out of every accuracy figure) and runs no figure counts."""
    out = []
    diverged = diverged_variants(summary)
    if diverged:
        differs = [v for v, d in diverged.items() if d.vs_baseline is not None and d.vs_baseline.differs]
        tested = (f" Fisher's exact test finds more divergence than the baseline's in {', '.join(differs)}." if differs
                  else "")
        out.append("Diverged runs, which have no final accuracy and are left out of every accuracy figure above "
                   f"(the Training stability section counts them): "
                   f"{'; '.join(f'{v} {describe_divergence(d)}' for v, d in diverged.items())}.{tested}")
    missing = not_counted(summary)
    if missing:
        counts = " and ".join(f"{n} {status} run{'s' if n != 1 else ''}" for status, n in missing.items())
        out.append(f"Not counted anywhere: {counts} (listed under Runs).")
    return out


def _why_untested(r: SeedResult) -> str:
    reason = r.detectable.reason or r.test.warning or "the t-test is undefined"
    return reason if reason.startswith("n=") else f"n={r.test.n} paired seeds, {reason}"


def _power_sentence(records) -> list[str]:
    d = [r.detectable for r in records if r.detectable.reason is None]
    if not d:
        return []
    effect = f"{d[0].effect:+.2f} pp"
    return [f"At 80% power these seeds could only have detected differences of "
            f"{_range([x.min_effect for x in d], _pp)} pp; detecting {effect} would take "
            f"{_range([_seeds(x) for x in d], _fmt_seeds)} paired seeds per variant."]


def headline_table(summary: dict[str, VariantEntry], baseline: str,
                   primary: str) -> tuple[list[str], list[list[str]]]:
    """variant, n, params, the primary metric's mean ± sd over its n runs; then over the seeds paired with the
    baseline: their number, the two means, the difference with its CI, adjusted p and verdict."""
    records = confirmatory(summary)
    rows = []
    for variant, e in summary.items():
        r = records.get(variant)
        n, mean, sd = _primary_values(e, primary)
        value = NA if mean is None else f"{mean:.2f}" if sd is None else f"{mean:.2f} ± {sd:.2f}"
        paired = means = NA
        t = None if r is None else r.test
        if t is None or t.mean_diff is None:
            diff = "(baseline)" if variant == baseline else NA
        else:
            diff = f"{t.mean_diff:+.2f}" + ("" if t.ci_low is None else f" [{t.ci_low:+.2f}, {t.ci_high:+.2f}]")
            paired = str(t.n)
            if t.mean_baseline is not None:
                means = f"{t.mean_baseline:.2f} → {t.mean_variant:.2f}"
        rows.append([variant, str(n), NA if e.params is None else f"{e.params / 1e6:.2f}M", value,
                     paired, means, diff,
                     NA if r is None or r.p_adjusted is None else fmt_p(r.p_adjusted, r.family.alpha),
                     "" if r is None else r.verdict])
    first = next(iter(records.values()), None)  # the probed model's kind is in its records
    kind, metric, _ = family_keys(primary, "ema" if first is None else first.family.kind)[0]
    title = f"{METRIC_TITLE[metric]}, {KIND_TITLE[kind]}"
    return (["variant", "n", "params", f"{title} (mean ± sd over n)", "paired seeds",
             "paired means (baseline → variant)", "difference vs baseline (pp) [CI]", "adjusted p", "verdict"], rows)


def _primary_values(entry: VariantEntry, primary: str) -> tuple[int, float | None, float | None]:
    """n, mean and sd of a variant's primary metric over its runs (for probe_miou: over its probed runs)."""
    if primary == PROBE_MIOU:
        probe = entry.segmentation
        return (0, None, None) if probe is None else (len(probe.seeds), probe.miou.mean, probe.miou.std)
    kind, metric = primary.split("_", 1)
    k = entry.model_kind(kind)
    spread = k.top1_final if metric == "top1_final" else k.p2f
    return k.n, spread.mean, spread.std
