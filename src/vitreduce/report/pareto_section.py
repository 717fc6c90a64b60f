"""The report's Pareto section: accuracy against cost per base model, the fronts, the accuracy-vs-degree fits
and the degree statements (vitreduce.report.pareto computes; this module words, tabulates and draws).

Figures: figures/pareto.png (final top-1 against unique parameters, linear MACs and measured throughput; one
row per model kind) and figures/degree.png (final top-1 against the fraction of MLP parameters kept, with the
descriptive fit, its bootstrap band, the baseline-minus-margin line and the degrees shown non-inferior); each
with an SVG beside it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vitreduce.numbers import macs_unit
from vitreduce.report.formatting import pm_column
from vitreduce.report.pareto import (
    COSTS,
    FIT_MODEL,
    INTERVAL,
    NONINFERIORITY,
    degree_statement,
    fit_statement,
    pareto_summary,
)
from vitreduce.report.pareto_records import Pareto, ParetoGroup
from vitreduce.report.plots import PALETTE, label_axes, legend_outside, new_figure, save_figure, variant_colors
from vitreduce.report.records import VariantEntry
from vitreduce.report.render import Block, Heading, Image, Paragraph, Table
from vitreduce.report.runs import KIND_TITLE, MODEL_KINDS, StudyRuns

MARKERS = {"baseline": "*", "shallow": "o", "grouped": "s", "thin": "^", "composition": "D"}
_SHORT = {"params": "params", "macs_linear": "MACs", "throughput_img_s": "throughput"}


def pareto_section(study: StudyRuns, summary: dict[str, VariantEntry], fig_dir: Path, *, alpha: float, margin: float,
                   n_resamples: int, seed: int) -> tuple[list[Block], Pareto | None]:
    """The section's blocks and summary.json's ``pareto`` ([] and None where the section does not apply)."""
    pareto = pareto_summary(study, summary, study.labels, alpha=alpha, margin=margin, n_resamples=n_resamples,
                            seed=seed)
    if pareto is None:
        return [], None
    colors = _colors(study, pareto.groups)
    _fig_pareto(pareto, colors, fig_dir / "pareto.png")
    blocks: list[Block] = [
        Heading("Accuracy against cost (Pareto)"),
        Paragraph("Final top-1 per variant (mean ± sample sd over seeds) against its cost, per base model. A variant "
                  "is on the front (marked *) when no other variant of its base model is at least as cheap and at "
                  "least as accurate in mean final top-1, and strictly one of them. Costs: unique parameters, "
                  "linear MACs per image (docs/metrics.md) and, where the study profiled it, measured inference "
                  "throughput (higher is cheaper). Exploratory: fronts of means, not tests."),
        Image("figures/pareto.png", "Final top-1 (mean, bars: sd over seeds) against cost: each variant in its "
                                    "colour of the other figures (one colour per base model when there are too "
                                    "many variants), one marker per strategy, the large star the baseline, the "
                                    "dashed line through ringed points the front."),
    ]
    for group, entry in pareto.groups.items():
        blocks += [Heading(group, level=3), Table(*_group_table(entry))]
    fits = [(g, f) for g, e in pareto.groups.items() for f in e.fits]
    if fits:
        _fig_degree(pareto, colors, fig_dir / "degree.png")
        blocks += [Heading("Accuracy against the degree of reduction", level=3),
                   Paragraph(f"The claim: {NONINFERIORITY}, per base model and strategy, on the degrees actually "
                             f"swept. At each degree, in order, a one-sided paired t-test over the seeds it shares "
                             f"with the baseline of H0: mean difference <= -{margin:g} pp (the non-inferiority "
                             "margin, statistics.margin) at level alpha; the sequence stops at the first degree not "
                             f"shown non-inferior. The study's alpha ({alpha:g}) is split evenly over the "
                             f"{pareto.series} series tested, so every statement below holds with a family-wise "
                             "error rate of at most alpha. A degree between two swept ones is never claimed."),
                   *(Paragraph(degree_statement(g, f)) for g, f in fits),
                   Paragraph(f"The description: {FIT_MODEL}, per base model and strategy (with at least three "
                             f"distinct degrees, the baseline included); band: {INTERVAL:.0%} percentile interval of "
                             f"{n_resamples:,} bootstrap fits, each resampling every variant's seeds with "
                             "replacement, widened about the fit for n seeds by sqrt(n/(n-1)) x t(n-1)/z. The curve "
                             "summarises the measured means; no claim rests on it."),
                   *(Paragraph(fit_statement(g, f)) for g, f in fits),
                   Image("figures/degree.png", f"Final top-1 against MLP parameters kept; curve: the descriptive "
                                               f"fit, band: its {INTERVAL:.0%} bootstrap interval, dashed: baseline "
                                               "minus the margin, ringed: the degrees shown non-inferior.")]
    return blocks, pareto


def _group_table(entry: ParetoGroup) -> tuple[list[str], list[list[str]]]:
    costs = [c for c in COSTS if any(v.cost(c) is not None for v in entry.variants.values())]
    headers = ["variant", "reduction", "MLP kept", *(COSTS[c] for c in costs),
               *(f"top-1 {KIND_TITLE[k]}" for k in MODEL_KINDS), "on the front"]
    accuracy = {k: pm_column([(v.model_kind(k).mean, v.model_kind(k).std) for v in entry.variants.values()])
                for k in MODEL_KINDS}  # one format per column
    rows = []
    for i, (name, v) in enumerate(entry.variants.items()):
        on = [f"{KIND_TITLE[k].split()[0]} vs {_SHORT[c]}" for k, fronts in entry.front.items()
              for c, f in fronts.items() if name in f]
        cells = [f"{v.params:,}" if c == "params" else f"{v.cost(c):.4g}" if v.cost(c) is not None else "n/a"
                 for c in costs]
        rows.append([f"{name} (baseline)" if name == entry.baseline else name, v.reduction or "n/a",
                     "n/a" if v.kept is None else f"{v.kept:.1%}", *cells,
                     *(accuracy[k][i] for k in MODEL_KINDS), "* " + ", ".join(on) if on else ""])
    return headers, rows


def _colors(study: StudyRuns, groups: dict[str, ParetoGroup]) -> tuple[dict[str, str], dict[str, str]]:
    """(colour per variant, colour per base model): each variant keeps its colour of every other figure while
    the study has few enough variants for distinct colours; past that, one colour per base model for all of
    its variants. A base model's front and fit take its baseline's colour (one per base model past that)."""
    by_variant = variant_colors(study)
    if len(by_variant) <= len(PALETTE):
        return by_variant, {g: by_variant.get(e.baseline, PALETTE[0]) for g, e in groups.items()}
    by_group = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}
    return {v: by_group[g] for g, e in groups.items() for v in e.variants}, by_group


def _cost_axis(cost: str, values: list[float]) -> tuple[float, str]:
    """(scale, label) in units that print as plain numbers: millions or thousands of parameters, GMACs, or
    MMACs and KMACs (tiny models), img/s."""
    top = max(values, default=0.0)
    if cost == "params":
        return (1e-6, "unique parameters (millions)") if top >= 1e6 else (1e-3, "unique parameters (thousands)")
    if cost == "macs_linear":
        divisor, unit = macs_unit(values)
        return 1 / divisor, f"MACs per image, linear ({unit})"
    return 1.0, "inference throughput (img/s)"


def _fig_pareto(pareto: Pareto, colors: tuple[dict[str, str], dict[str, str]], path: Path) -> None:
    """Final top-1 against each cost, one row per model kind: marker per strategy, the baseline a large star,
    the front a line through ringed points; one legend outside the axes with only what is drawn."""
    groups, (by_variant, by_group) = pareto.groups, colors
    kinds = [k for k in MODEL_KINDS if any(k in e.front for e in groups.values())]
    costs = [c for c in COSTS if any(c in e.front.get(k, {}) for e in groups.values() for k in kinds)]
    fig = new_figure(4.2 * len(costs) + 2.6, 3.6 * len(kinds))
    axes = fig.subplots(len(kinds), len(costs), squeeze=False)
    per_variant = len(set(by_variant.values())) == len(by_variant)
    for col, cost in enumerate(costs):
        scale, xlabel = _cost_axis(cost, [v.cost(cost) for e in groups.values() for v in e.variants.values()
                                          if v.cost(cost) is not None])
        for row, kind in enumerate(kinds):
            ax = axes[row, col]
            for group, entry in groups.items():
                _draw_group(ax, group, entry, kind, cost, scale, by_variant, by_group[group], per_variant)
            label_axes(ax, xlabel=xlabel, ylabel=f"final top-1 (%), {KIND_TITLE[kind]}")
            ax.ticklabel_format(axis="both", style="plain", useOffset=False)
    strategies = {v.strategy for e in groups.values() for v in e.variants.values()}
    for strategy, marker in MARKERS.items():  # the marker key: strategies present only
        if strategy in strategies and not (per_variant and strategy == "baseline"):  # there: "(baseline)"
            axes[0, 0].plot([], [], marker=marker, color="gray", ls="none", label=f"marker: {strategy}")
    legend_outside(fig, last=("marker: ", "front, "))
    save_figure(fig, path)


def _draw_group(ax, group: str, entry: ParetoGroup, kind: str, cost: str, scale: float, by_variant: dict[str, str],
                line_color: str, per_variant: bool) -> None:
    points = {n: v for n, v in entry.variants.items()
              if v.cost(cost) is not None and v.model_kind(kind).mean is not None}
    for name, v in points.items():
        base = name == entry.baseline
        ax.errorbar(v.cost(cost) * scale, v.model_kind(kind).mean, yerr=v.model_kind(kind).std or 0,
                    color=by_variant[name], marker=MARKERS.get(v.strategy, "o"), ms=12 if base else 6,
                    mec="black" if base else None,
                    capsize=2, ls="none", zorder=4 if base else 3,  # the baseline on top
                    label=(f"{name} (baseline)" if base else name) if per_variant else group)
    line = sorted(entry.front.get(kind, {}).get(cost, ()), key=lambda n: points[n].cost(cost))
    xs, ys = [points[n].cost(cost) * scale for n in line], [points[n].model_kind(kind).mean for n in line]
    ax.plot(xs, ys, color=line_color, lw=1.2, ls="--", marker="o", ms=15, mfc="none", alpha=0.8, zorder=2,
            label=f"front, {group} (ringed)")


def _fig_degree(pareto: Pareto, colors: tuple[dict[str, str], dict[str, str]], path: Path) -> None:
    groups, (by_variant, by_group) = {g: e for g, e in pareto.groups.items() if e.fits}, colors
    fig = new_figure(4.6 * len(groups) + 2.6, 3.8)
    for ax, (group, entry) in zip(fig.subplots(1, len(groups), squeeze=False)[0], groups.items(), strict=True):
        for fit in entry.fits:
            grid, color = 100 * np.asarray(fit.grid), by_group[group]
            marker = MARKERS.get(fit.strategy, "o")
            # top-1 is a percentage: the band is drawn inside [0, 100] (summary.json keeps the bootstrap's ends)
            ax.fill_between(grid, np.clip(fit.low, 0, 100), np.clip(fit.high, 0, 100), color=color,
                            alpha=0.15, linewidth=0, label=f"{group}, {fit.strategy}: {INTERVAL:.0%} band")
            ax.plot(grid, fit.mean, color=color, ls="-" if marker == "o" else "-.",
                    label=f"{group}, {fit.strategy}: fit")
            for name in fit.variants:
                v, base = entry.variants[name].model_kind(fit.kind), name == entry.baseline
                ax.errorbar(100 * entry.variants[name].kept, v.mean, yerr=v.std or 0,
                            color=by_variant[name], marker="*" if base else marker, ms=12 if base else 6,
                            mec="black" if base else None, ls="none", capsize=2, zorder=3, label=name)
            ax.axhline(fit.baseline_mean - fit.degree.margin, color="gray", ls="--", lw=1,
                       label="baseline minus margin")
            shown = [s for s in fit.degree.steps if s.shown]
            means = [entry.variants[s.name].model_kind(fit.kind).mean for s in shown]
            ax.plot([100 * s.kept for s in shown], means, ls="none", marker="o", ms=15, mfc="none", color=color,
                    label="shown non-inferior")
        ax.invert_xaxis()  # reduction grows to the right
        label_axes(ax, xlabel="MLP parameters kept (% of the base model's)",
                   ylabel=f"final top-1 (%), {KIND_TITLE[entry.fits[0].kind]}", title=group)
    legend_outside(fig, last=("baseline minus margin", "shown non-inferior"))
    save_figure(fig, path)
