"""Accuracy against cost: the Pareto front, the accuracy-vs-degree fit and the degree at which accuracy drops.

Pure functions of a study's runs and summary (vitreduce.study.runs). Variants are grouped by base model:
the sweep's labels (study.yaml ``sweep:``), else run.json's model name and width. Per base model:

- **front**: for each cost (unique parameters, linear MACs, measured inference throughput where profiled)
  and model kind (raw, EMA), the variants no other variant beats on both cost and mean final top-1;
- **fit** (one per reduction strategy with at least three distinct degrees, the baseline included): mean
  final top-1 over seeds against r = 1 - kept, kept = MLP parameters (unique) / the base model's, fitted
  by least squares as top1 = a + b r + c r^2 (a line with two degrees); its uncertainty is a percentile
  interval over a bootstrap that resamples each variant's seeds, widened about the fit for n seeds by
  sqrt(n/(n-1)) x t_{n-1}/z (resampling few seeds understates the spread of their mean and its tails);
- **degree**: the least reduction at which the fitted curve falls below the baseline's mean by more than
  the detectable effect delta, looked for only inside the swept range; delta is the minimum difference a
  paired t-test over these seeds detects with 80% power (vitreduce.study.power), else the study's effect.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from vitreduce.study.power import minimum_detectable
from vitreduce.study.runs import MODEL_KINDS, StudyRuns

COSTS = {"params": "unique parameters", "macs_linear": "MACs (linear)", "throughput_img_s": "throughput (img/s)"}
LOWER_IS_CHEAPER = {"params": True, "macs_linear": True, "throughput_img_s": False}
FIT_MODEL = ("top1 = a + b*r + c*r^2 with r = 1 - kept (kept: MLP parameters over the base model's), least squares "
             "through the variants' mean final top-1 (a line where only two degrees are swept)")
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


def group_variants(study: StudyRuns, summary: dict, labels: dict[str, str]) -> dict[str, list[str]]:
    """{base model: its variants}, in the study's order: the sweep's labels, else run.json's model and width."""
    groups: dict[str, list[str]] = {}
    for variant, entry in summary.items():
        key = labels.get(variant) or f"{entry.get('model')} (width {entry.get('embed_dim')})"
        groups.setdefault(key, []).append(variant)
    return groups


def group_baseline(variants: list[str], summary: dict) -> str | None:
    """The group's unreduced variant (reduction none), else its most expensive one."""
    plain = [v for v in variants if summary[v].get("reduction") in ("none", None) and summary[v].get("params")]
    if plain:
        return plain[0]
    costed = [v for v in variants if summary[v].get("params")]
    return max(costed, key=lambda v: summary[v]["params"]) if costed else None


def applies(groups: dict[str, list[str]], summary: dict, swept: bool) -> bool:
    """The section is shown for a sweep, or when some base model has 3 or more variants of different cost."""
    return swept or any(len({summary[v].get("params") for v in vs} - {None}) >= 3 for vs in groups.values())


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


def crossing(grid: np.ndarray, curve: np.ndarray, threshold: float) -> float | None:
    """The largest kept (least reduction) on the descending ``grid`` where ``curve`` is below ``threshold``."""
    below = np.nonzero(curve < threshold)[0]
    return float(grid[below[0]]) if below.size else None


def detectable_drop(series: Series, baseline: str, alpha: float, effect: float) -> tuple[float, str]:
    """delta (pp) and where it comes from: the minimum detectable difference of the paired t-test over the
    series' seeds (pooled sd of the paired differences with the baseline), else the study's stated effect."""
    base = series.values[baseline]
    residuals, ns = [], []
    for variant, values in series.values.items():
        diffs = [values[s] - base[s] for s in values if s in base]
        if variant != baseline and len(diffs) >= 2:
            residuals += list(np.asarray(diffs) - np.mean(diffs))
            ns.append(len(diffs))
    dof = len(residuals) - len(ns)
    if ns and dof > 0:
        sd = math.sqrt(sum(x * x for x in residuals) / dof)
        n = int(np.median(ns))
        if sd > 1e-9:
            return minimum_detectable(sd, n, alpha), (
                f"the minimum difference a paired t-test over {n} seeds detects with 80% power at alpha={alpha:g} "
                f"(pooled sd of the paired differences {sd:.2f} pp)")
    return effect, "the study's stated effect (the seed-to-seed spread could not be estimated from these seeds)"


def _widening(n: int) -> float:
    """How much wider than the bootstrap's percentiles the interval is drawn, for n seeds per variant.

    Resampling n seeds spreads their mean by sd/sqrt(n) x sqrt((n-1)/n), and a mean of a few seeds has
    Student's t tails, not normal ones: sqrt(n/(n-1)) x t_{n-1} / z at the interval's level (1.87 for 4 seeds).
    """
    if n < 2:
        return 1.0
    q = 1 - (1 - INTERVAL) / 2
    return math.sqrt(n / (n - 1)) * float(sps.t.ppf(q, n - 1) / sps.norm.ppf(q))


def fit_series(series: Series, baseline: str, delta: float, n_resamples: int = DEFAULT_RESAMPLES,
               seed: int = DEFAULT_SEED) -> dict:
    """The fit, its bootstrap interval on a grid of kept, and where it falls below baseline - delta."""
    names = [v for v in series.kept if series.values.get(v)]
    kept = np.array([series.kept[v] for v in names])
    grid = np.unique(np.concatenate([np.linspace(kept.min(), 1.0, GRID), kept]))[::-1]  # descending, swept included
    coef = polyfit(kept, np.array([np.mean(list(series.values[v].values())) for v in names]))
    base_mean = float(np.mean(list(series.values[baseline].values())))
    rng = np.random.default_rng(seed)
    curves, crossings, coefs = [], [], []
    for _ in range(n_resamples):
        means = {v: float(np.mean(rng.choice(list(series.values[v].values()), len(series.values[v]))))
                 for v in names}
        c = polyfit(kept, np.array([means[v] for v in names]))
        curve = evaluate(c, grid)
        coefs.append(c)
        curves.append(curve)
        crossings.append(crossing(grid, curve, means[baseline] - delta))
    tail = (1 - INTERVAL) / 2 * 100
    curve = evaluate(coef, grid)
    widen = _widening(min(len(series.values[v]) for v in names))
    low, high = (curve + widen * (p - curve) for p in np.percentile(np.array(curves), [tail, 100 - tail], axis=0))
    c_low, c_high = (coef + widen * (p - coef) for p in np.percentile(np.array(coefs), [tail, 100 - tail], axis=0))
    reached = [x for x in crossings if x is not None]
    at = crossing(grid, curve, base_mean - delta)
    return {
        "strategy": series.strategy, "variants": names, "kept": kept.tolist(), "coefficients": coef.tolist(),
        "coefficients_low": c_low.tolist(), "coefficients_high": c_high.tolist(),
        "grid": grid.tolist(), "mean": curve.tolist(), "low": low.tolist(), "high": high.tolist(),
        "baseline_mean": base_mean, "threshold": base_mean - delta,
        "degree": {"reached": at is not None, "kept": at,
                   "kept_interval": None if not reached else [float(np.percentile(reached, tail)),
                                                              float(np.percentile(reached, 100 - tail))],
                   "reached_fraction": len(reached) / n_resamples, "swept_min_kept": float(kept.min())},
    }


def _kind_stats(values: dict[int, float]) -> dict:
    xs = list(values.values())
    return {"n": len(xs), "mean": float(np.mean(xs)) if xs else None,
            "std": float(np.std(xs, ddof=1)) if len(xs) >= 2 else None, "seeds": sorted(values)}


def _fit_kind(study: StudyRuns, variants: list[str]) -> str:
    """EMA where every variant of the group has an EMA model (the paper reports it), else raw."""
    return "ema" if all(seed_values(study, v, "ema") for v in variants) else "raw"


def _group(study: StudyRuns, summary: dict, variants: list[str], settings: dict) -> dict:
    baseline = group_baseline(variants, summary)
    base_mlp = summary[baseline].get("mlp_params") if baseline else None
    entries = {}
    for v in variants:
        e = summary[v]
        entries[v] = {"reduction": e.get("reduction"), "strategy": strategy_of(e.get("reduction")),
                      "kept": e["mlp_params"] / base_mlp if base_mlp and e.get("mlp_params") is not None else None,
                      **{cost: e.get(cost) for cost in COSTS},
                      **{kind: _kind_stats(seed_values(study, v, kind)) for kind in MODEL_KINDS}}
    fronts = {kind: {cost: front({v: (x[cost], x[kind]["mean"]) for v, x in entries.items()
                                  if x[cost] is not None and x[kind]["mean"] is not None}, LOWER_IS_CHEAPER[cost])
                     for cost in COSTS if any(x[cost] is not None for x in entries.values())}
              for kind in MODEL_KINDS if any(x[kind]["n"] for x in entries.values())}
    kind = _fit_kind(study, variants)
    fits = []
    for strategy in sorted({x["strategy"] for x in entries.values()} - {"baseline", "composition"}):
        members = [v for v in variants if v == baseline or entries[v]["strategy"] == strategy]
        kept = {v: entries[v]["kept"] for v in members if entries[v]["kept"] is not None and entries[v][kind]["n"]}
        if baseline not in kept or len(set(kept.values())) < 3:
            continue
        series = Series(strategy, kept, {v: seed_values(study, v, kind) for v in kept})
        delta, source = detectable_drop(series, baseline, settings["alpha"], settings["effect"])
        fit = fit_series(series, baseline, delta, settings["n_resamples"], settings["seed"])
        fit.update(kind=kind, delta=delta, delta_source=source,
                   below=[{"variant": v, "kept": kept[v],
                           "difference": entries[v][kind]["mean"] - entries[baseline][kind]["mean"]}
                          for v in kept if entries[v][kind]["mean"] - entries[baseline][kind]["mean"] < -delta])
        fits.append(fit)
    return {"baseline": baseline, "variants": entries, "front": fronts, "fits": fits}


def pareto_summary(study: StudyRuns, summary: dict, labels: dict[str, str], *, alpha: float, effect: float,
                   n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> dict | None:
    """summary.json's ``pareto``: per base model its variants, fronts and fits; None where the section does
    not apply (no sweep, and no base model with three variants of different cost)."""
    groups = group_variants(study, summary, labels)
    if not applies(groups, summary, bool(labels)):
        return None
    settings = {"alpha": alpha, "effect": effect, "n_resamples": n_resamples, "seed": seed}
    return {"costs": COSTS, "fit_model": FIT_MODEL, "interval": INTERVAL, "resamples": n_resamples,
            "bootstrap_seed": seed, "alpha": alpha,
            "groups": {name: _group(study, summary, variants, settings) for name, variants in groups.items()}}


def degree_statement(group: str, fit: dict) -> str:
    """The degree at which accuracy falls below the baseline, with its evidence; never past the swept range."""
    d, what = fit["degree"], f"{group}, {fit['strategy']}"
    rule = (f"below the baseline's mean final top-1 ({fit['baseline_mean']:.2f}%) by more than {fit['delta']:.2f} pp "
            f"({fit['delta_source']})")
    measured = "; ".join(f"{b['variant']} {b['difference']:+.2f} pp" for b in fit["below"]) or "none"
    if not d["reached"]:
        share = f"; {d['reached_fraction']:.0%} of the bootstrap fits do" if d["reached_fraction"] else ""
        return (f"{what}: the fitted accuracy does not fall {rule}: not reached in the swept range (down to "
                f"{d['swept_min_kept']:.1%} of MLP parameters kept{share}). Swept variants below that line: "
                f"{measured}.")
    interval = d["kept_interval"]
    spread = f", {INTERVAL:.0%} bootstrap interval {interval[0]:.1%}-{interval[1]:.1%}" if interval else ""
    return (f"{what}: the fitted accuracy falls {rule} at {d['kept']:.1%} of MLP parameters kept{spread} "
            f"(reached in {d['reached_fraction']:.0%} of the bootstrap fits). Swept variants below that line: "
            f"{measured}.")
