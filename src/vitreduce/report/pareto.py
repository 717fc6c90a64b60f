"""Accuracy against cost: the Pareto front, the accuracy-vs-degree fit and the degree at which accuracy drops.

Pure functions of a study's runs and summary (vitreduce.report.runs). Variants are grouped by base model:
the sweep's labels (study.yaml ``sweep:``), else run.json's model name and width. Per base model:

- **front**: for each cost (unique parameters, linear MACs, measured inference throughput where profiled)
  and model kind (raw, EMA), the variants no other variant beats on both cost and mean final top-1;
- **fit** (one per reduction strategy with at least three distinct degrees, the baseline included): mean
  final top-1 over seeds against r = 1 - kept, kept = MLP parameters (unique) / the base model's, fitted
  by least squares as top1 = a + b r + c r^2 (a line with two degrees); a description, never the basis of
  a claim: its band is a percentile interval over a bootstrap that resamples each variant's seeds, widened
  about the fit for n seeds by sqrt(n/(n-1)) x t_{n-1}/z, and its lack of fit is checked with an F-test
  against the seed-to-seed spread;
- **degree** (the claim): a fixed-sequence non-inferiority test over the degrees actually swept, from the
  least to the most reduced (vitreduce.statistics.noninferiority), against the spec's margin
  (``statistics.margin``), at the study's alpha split evenly over the fitted series (Bonferroni), so the
  most reduced degree shown non-inferior has a family-wise error rate of at most alpha.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from vitreduce.report.pareto_records import DegreeTest, Fit, KindStats, Pareto, ParetoGroup, ParetoPoint
from vitreduce.report.records import VariantEntry
from vitreduce.report.runs import MODEL_KINDS, StudyRuns
from vitreduce.statistics.noninferiority import Step, fixed_sequence, lack_of_fit
from vitreduce.statistics.pvalue import fmt_p
from vitreduce.statistics.sample import Sample

COSTS = {"params": "unique parameters", "macs_linear": "MACs (linear)", "throughput_img_s": "throughput (img/s)"}
LOWER_IS_CHEAPER = {"params": True, "macs_linear": True, "throughput_img_s": False}
FIT_MODEL = ("top1 = a + b*r + c*r^2 with r = 1 - kept (kept: MLP parameters over the base model's), least squares "
             "through the variants' mean final top-1 (a line where only two degrees are swept)")
NONINFERIORITY = "fixed-sequence non-inferiority (one-sided paired t-tests, least to most reduced)"
DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
INTERVAL = 0.95  # the bootstrap's percentile interval
GRID = 101  # points of the fitted curve, across the swept range of kept


@dataclass(frozen=True)
class Series:
    """The variants of one base model that one reduction strategy makes, with the baseline: what is fitted."""

    strategy: str
    kept: dict[str, float]  # variant -> fraction of MLP parameters kept
    values: dict[str, dict[int, float]]  # variant -> {seed: final top-1}


def group_variants(study: StudyRuns, summary: dict[str, VariantEntry], labels: dict[str, str]) -> dict[str, list[str]]:
    """{base model: its variants}, in the study's order: the sweep's labels, else run.json's model and width."""
    groups: dict[str, list[str]] = {}
    for variant, entry in summary.items():
        key = labels.get(variant) or f"{entry.model} (width {entry.embed_dim})"
        groups.setdefault(key, []).append(variant)
    return groups


def group_baseline(variants: list[str], summary: dict[str, VariantEntry]) -> str | None:
    """The group's unreduced variant (reduction none), else its most expensive one."""
    plain = [v for v in variants if summary[v].reduction in ("none", None) and summary[v].params]
    if plain:
        return plain[0]
    costed = [v for v in variants if summary[v].params]
    return max(costed, key=lambda v: summary[v].params) if costed else None


def applies(groups: dict[str, list[str]], summary: dict[str, VariantEntry], swept: bool) -> bool:
    """The section is shown for a sweep, or when some base model has 3 or more variants of different cost."""
    return swept or any(len({summary[v].params for v in vs} - {None}) >= 3 for vs in groups.values())



def front(points: dict[str, tuple[float, float]], lower_is_cheaper: bool = True) -> list[str]:
    """The non-dominated variants of {variant: (cost, accuracy)}, cheapest first.

    A variant is dominated when another is at least as cheap and at least as accurate, and strictly one of them.
    """
    sign = 1.0 if lower_is_cheaper else -1.0
    cost = {v: sign * c for v, (c, _) in points.items()}
    out = [v for v, (_, a) in points.items()
           if not any(cost[u] <= cost[v] and b >= a and (cost[u] < cost[v] or b > a)
                      for u, (_, b) in points.items() if u != v)]
    return sorted(out, key=lambda v: cost[v])


def strategy_of(reduction: str | None) -> str:
    """'baseline', the one strategy of a reduction string, or 'composition'."""
    if reduction in (None, "none"):
        return "baseline"
    steps = {part.split(":")[0] for part in reduction.split("+")}
    return steps.pop() if len(steps) == 1 else "composition"


def seed_values(study: StudyRuns, variant: str, kind: str) -> dict[int, float]:
    """{seed: final top-1 of `kind`} of a variant's runs."""
    out = {}
    for run in study.variants.get(variant, []):
        model = run.model(kind)
        if model is not None and run.seed is not None:
            out[run.seed] = model.top1_final
    return out


def polyfit(kept: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Coefficients (a, b, c) of top1 = a + b r + c r^2, r = 1 - kept (c = 0 with two distinct degrees)."""
    r = 1.0 - kept
    degree = min(2, len(np.unique(r)) - 1)
    design = np.vander(r, degree + 1, increasing=True)  # (variants, degree+1): 1, r, r^2
    coef = np.linalg.lstsq(design, means, rcond=None)[0]
    return np.pad(coef, (0, 3 - len(coef)))


def evaluate(coef: np.ndarray, kept: np.ndarray) -> np.ndarray:
    r = 1.0 - kept
    return coef[0] + coef[1] * r + coef[2] * r * r


def _widening(n: int) -> float:
    """How much wider than the bootstrap's percentiles the interval is drawn, for n seeds per variant.

    Resampling n seeds spreads their mean by sd/sqrt(n) x sqrt((n-1)/n), and a mean of a few seeds has
    Student's t tails, not normal ones: sqrt(n/(n-1)) x t_{n-1} / z at the interval's level (1.87 for 4 seeds).
    """
    if n < 2:
        return 1.0
    q = 1 - (1 - INTERVAL) / 2
    return math.sqrt(n / (n - 1)) * float(sps.t.ppf(q, n - 1) / sps.norm.ppf(q))


def fit_series(series: Series, baseline: str, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> dict:
    """The descriptive fit, its bootstrap band on a grid of kept, and its lack-of-fit check: the fields of
    records.Fit but its kind and degree test."""
    names = [v for v in series.kept if series.values.get(v)]
    kept = np.array([series.kept[v] for v in names])
    grid = np.unique(np.concatenate([np.linspace(kept.min(), 1.0, GRID), kept]))[::-1]  # descending, swept included
    coef = polyfit(kept, np.array([np.mean(list(series.values[v].values())) for v in names]))
    rng = np.random.default_rng(seed)
    curves, coefs = [], []
    for _ in range(n_resamples):
        means = [float(np.mean(rng.choice(list(series.values[v].values()), len(series.values[v])))) for v in names]
        c = polyfit(kept, np.array(means))
        coefs.append(c)
        curves.append(evaluate(c, grid))
    tail = (1 - INTERVAL) / 2 * 100
    curve = evaluate(coef, grid)
    widen = _widening(min(len(series.values[v]) for v in names))
    low, high = (curve + widen * (p - curve) for p in np.percentile(np.array(curves), [tail, 100 - tail], axis=0))
    c_low, c_high = (coef + widen * (p - coef) for p in np.percentile(np.array(coefs), [tail, 100 - tail], axis=0))
    fit_check = lack_of_fit([list(series.values[v].values()) for v in names], evaluate(coef, kept).tolist(),
                            min(3, len(np.unique(kept))))
    return {
        "strategy": series.strategy, "variants": tuple(names), "kept": tuple(kept.tolist()),
        "coefficients": tuple(coef.tolist()), "coefficients_low": tuple(c_low.tolist()),
        "coefficients_high": tuple(c_high.tolist()), "grid": tuple(grid.tolist()), "mean": tuple(curve.tolist()),
        "low": tuple(low.tolist()), "high": tuple(high.tolist()),
        "baseline_mean": float(np.mean(list(series.values[baseline].values()))), "lack_of_fit": fit_check,
    }


def degree_test(series: Series, baseline: str, margin: float, alpha: float) -> DegreeTest:
    """The fixed-sequence non-inferiority test over a series' swept degrees."""
    base = series.values[baseline]
    degrees = [(v, series.kept[v], [vals[s] - base[s] for s in sorted(vals) if s in base])
               for v, vals in series.values.items() if v != baseline]
    result = fixed_sequence(degrees, margin, alpha)
    best = result.most_reduced
    return DegreeTest(NONINFERIORITY, margin, alpha, result.steps, None if best is None else best.name,
                      None if best is None else best.kept, float(min(series.kept.values())))


def _kind_stats(values: dict[int, float]) -> KindStats:
    sample = Sample(tuple(values.values()))
    return KindStats(sample.n, sample.mean, sample.sd, tuple(sorted(values)))


def _fit_kind(study: StudyRuns, variants: list[str]) -> str:
    """EMA where every variant of the group has an EMA model (the paper reports it), else raw."""
    return "ema" if all(seed_values(study, v, "ema") for v in variants) else "raw"


def _points(study: StudyRuns, summary: dict[str, VariantEntry], variants: list[str],
            baseline: str | None) -> dict[str, ParetoPoint]:
    base_mlp = summary[baseline].mlp_params if baseline else None
    points = {}
    for v in variants:
        e = summary[v]
        points[v] = ParetoPoint(e.reduction, strategy_of(e.reduction),
                                e.mlp_params / base_mlp if base_mlp and e.mlp_params is not None else None,
                                e.params, e.macs_linear, e.throughput_img_s,
                                *(_kind_stats(seed_values(study, v, kind)) for kind in MODEL_KINDS))
    return points


def _group(study: StudyRuns, summary: dict[str, VariantEntry], variants: list[str],
           settings: dict) -> tuple[ParetoGroup, list[tuple[dict, Series]]]:
    """A base model's group without its fits, and each fit's fields with its series (the degree tests need
    every series' count first: pareto_summary)."""
    baseline = group_baseline(variants, summary)
    points = _points(study, summary, variants, baseline)
    fronts = {kind: {cost: tuple(front({v: (x.cost(cost), x.model_kind(kind).mean) for v, x in points.items()
                                        if x.cost(cost) is not None and x.model_kind(kind).mean is not None},
                                       LOWER_IS_CHEAPER[cost]))
                     for cost in COSTS if any(x.cost(cost) is not None for x in points.values())}
              for kind in MODEL_KINDS if any(x.model_kind(kind).n for x in points.values())}
    kind = _fit_kind(study, variants)
    fits = []
    for strategy in sorted({x.strategy for x in points.values()} - {"baseline", "composition"}):
        members = [v for v in variants if v == baseline or points[v].strategy == strategy]
        kept = {v: points[v].kept for v in members if points[v].kept is not None and points[v].model_kind(kind).n}
        if baseline not in kept or len(set(kept.values())) < 3:
            continue
        series = Series(strategy, kept, {v: seed_values(study, v, kind) for v in kept})
        fits.append(({**fit_series(series, baseline, settings["n_resamples"], settings["seed"]), "kind": kind},
                     series))
    return ParetoGroup(baseline, points, fronts, ()), fits


def pareto_summary(study: StudyRuns, summary: dict[str, VariantEntry], labels: dict[str, str], *, alpha: float,
                   margin: float, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> Pareto | None:
    """summary.json's ``pareto``: per base model its variants, fronts and fits; None where the section does
    not apply (no sweep, and no base model with three variants of different cost)."""
    groups = group_variants(study, summary, labels)
    if not applies(groups, summary, bool(labels)):
        return None
    settings = {"n_resamples": n_resamples, "seed": seed}
    built = {name: _group(study, summary, variants, settings) for name, variants in groups.items()}
    count = sum(len(fits) for _, fits in built.values())
    out = {}
    for name, (group, fits) in built.items():  # one family over every series: alpha split evenly (Bonferroni)
        out[name] = dataclasses.replace(group, fits=tuple(
            Fit(**fields, degree=degree_test(series, group.baseline, margin, alpha / count))
            for fields, series in fits))
    return Pareto(COSTS, FIT_MODEL, INTERVAL, n_resamples, seed, alpha, margin, count, out)


def degree_statement(group: str, fit: Fit) -> str:
    """The claim about the degree, from the fixed-sequence non-inferiority test on the swept degrees only."""
    d, what = fit.degree, f"{group}, {fit.strategy}"
    rule = (f"non-inferior to the baseline within {d.margin:g} pp of {fit_title(fit)} (one-sided paired t-tests "
            f"in a fixed sequence from the least to the most reduced degree, family-wise alpha {d.alpha:.3g})")
    steps = "; ".join(_step_text(s, d.alpha) for s in d.steps)
    if d.most_reduced is None:
        return f"{what}: no swept degree is shown {rule}. Steps: {steps}."
    return (f"{what}: the most reduced degree shown {rule} is {d.most_reduced} ({d.most_reduced_kept:.1%} of "
            f"MLP parameters kept). Degrees between the swept ones are not claimed. Steps: {steps}.")


def fit_title(fit: Fit) -> str:
    return f"final top-1 of the {'EMA' if fit.kind == 'ema' else 'raw'} model"


def _step_text(step: Step, alpha: float) -> str:
    if step.p is None:
        return f"{step.name} {step.note}"
    return (f"{step.name} {step.mean_diff:+.2f} pp, lower bound {step.lower:+.2f} pp, "
            f"p={fmt_p(step.p, alpha)}: {step.note}")


def fit_statement(group: str, fit: Fit) -> str:
    """What the descriptive fit is, and whether it misses the measured means by more than their spread."""
    lof = fit.lack_of_fit
    check = (f"lack of fit {lof.note}, p={fmt_p(lof.p, 0.05)}"
             + (": the curve misses the measured means by more than their seed-to-seed spread, so read the "
                "measured points, not the curve" if lof.p < 0.05 else "") if lof.p is not None else lof.note)
    return f"{group}, {fit.strategy}: the fitted curve is a description of the measured means ({check})."
