"""The report's Pareto section: accuracy against cost per base model, the fronts, the accuracy-vs-degree fits
and the degree statements (vitreduce.study.pareto computes; this module words, tabulates and draws).

Figures: figures/pareto.png (final top-1 against unique parameters, linear MACs and measured throughput; one
row per model kind) and figures/degree.png (final top-1 against the fraction of MLP parameters kept, with the
fit, its bootstrap band and the baseline-minus-delta line); each with an SVG beside it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vitreduce.config_tree import read_yaml
from vitreduce.study.formatting import pm
from vitreduce.study.pareto import COSTS, FIT_MODEL, INTERVAL, degree_statement, pareto_summary
from vitreduce.study.plots import label_axes, legend_outside, new_figure, save_figure, variant_colors
from vitreduce.study.render import Block, Heading, Image, Paragraph, Table
from vitreduce.study.runs import KIND_TITLE, MODEL_KINDS, StudyRuns
from vitreduce.study.sweep import sweep_labels

MARKERS = {"baseline": "*", "shallow": "o", "grouped": "s", "thin": "^", "composition": "D"}
_SHORT = {"params": "params", "macs_linear_g": "MACs", "throughput_img_s": "throughput"}
_SCALE = {"params": (1e-6, "unique parameters (millions)"), "macs_linear_g": (1.0, "MACs per image, linear (G)"),
          "throughput_img_s": (1.0, "inference throughput (img/s)")}


def pareto_section(study: StudyRuns, summary: dict, fig_dir: Path, *, alpha: float, effect: float,
                   n_resamples: int, seed: int) -> tuple[list[Block], dict | None]:
    """The section's blocks and summary.json's ``pareto`` ([] and None where the section does not apply)."""
    spec = study.study_dir / "study.yaml"
    labels = sweep_labels(read_yaml(spec)) if spec.is_file() else {}
    pareto = pareto_summary(study, summary, labels, alpha=alpha, effect=effect, n_resamples=n_resamples, seed=seed)
    if pareto is None:
        return [], None
    colors = variant_colors(study)
    group_colors = {g: colors.get(e["baseline"], "#333333") for g, e in pareto["groups"].items()}
    _fig_pareto(pareto, group_colors, fig_dir / "pareto.png")
    blocks: list[Block] = [
        Heading("Accuracy against cost (Pareto)"),
        Paragraph("Final top-1 per variant (mean ± sample sd over seeds) against its cost, per base model. A variant "
                  "is on the front (marked *) when no other variant of its base model is at least as cheap and at "
                  "least as accurate in mean final top-1, and strictly one of them. Costs: unique parameters, "
                  "linear MACs per image (docs/metrics.md) and, where the study profiled it, measured inference "
                  "throughput (higher is cheaper). Exploratory: fronts of means, not tests."),
        Image("figures/pareto.png", "Final top-1 (mean, bars: sd over seeds) against cost; one colour per base "
                                    "model, one marker per strategy, the star its baseline, the line its front."),
    ]
    for group, entry in pareto["groups"].items():
        blocks += [Heading(group, level=3), Table(*_group_table(entry))]
    fits = [(g, f) for g, e in pareto["groups"].items() for f in e["fits"]]
    if fits:
        _fig_degree(pareto, group_colors, fig_dir / "degree.png")
        blocks += [Heading("Accuracy against the degree of reduction", level=3),
                   Paragraph(f"Fit: {FIT_MODEL}, per base model and strategy (with at least three distinct degrees, "
                             f"the baseline included); band: {INTERVAL:.0%} percentile interval of {n_resamples:,} "
                             "bootstrap fits, each resampling every variant's seeds with replacement, widened about "
                             "the fit for n seeds by sqrt(n/(n-1)) x t(n-1)/z (resampling few seeds understates the "
                             "spread of their mean and its tails). The degree statement is looked for only inside the "
                             "swept range."),
                   Image("figures/degree.png", f"Final top-1 against MLP parameters kept; curve: the fit, band: its "
                                               f"{INTERVAL:.0%} bootstrap interval, dashed: baseline minus delta."),
                   *(Paragraph(degree_statement(g, f)) for g, f in fits)]
    return blocks, pareto


def _group_table(entry: dict) -> tuple[list[str], list[list[str]]]:
    costs = [c for c in COSTS if any(v[c] is not None for v in entry["variants"].values())]
    headers = ["variant", "reduction", "MLP kept", *(COSTS[c] for c in costs),
               *(f"top-1 {KIND_TITLE[k]}" for k in MODEL_KINDS), "on the front"]
    rows = []
    for name, v in entry["variants"].items():
        on = [f"{KIND_TITLE[k].split()[0]} vs {_SHORT[c]}" for k, fronts in entry["front"].items()
              for c, f in fronts.items() if name in f]
        cells = [f"{v['params']:,}" if c == "params" else f"{v[c]:.4g}" if v[c] is not None else "n/a" for c in costs]
        rows.append([f"{name} (baseline)" if name == entry["baseline"] else name, v["reduction"] or "n/a",
                     "n/a" if v["kept"] is None else f"{v['kept']:.1%}", *cells,
                     *(pm(v[k]["mean"], v[k]["std"]) for k in MODEL_KINDS), "* " + ", ".join(on) if on else ""])
    return headers, rows


def _fig_pareto(pareto: dict, colors: dict[str, str], path: Path) -> None:
    groups = pareto["groups"]
    kinds = [k for k in MODEL_KINDS if any(k in e["front"] for e in groups.values())]
    costs = [c for c in COSTS if any(c in e["front"].get(k, {}) for e in groups.values() for k in kinds)]
    fig = new_figure(4.2 * len(costs) + 2, 3.6 * len(kinds))
    axes = np.atleast_2d(fig.subplots(len(kinds), len(costs), squeeze=False))
    for row, kind in enumerate(kinds):
        for col, cost in enumerate(costs):
            ax, (scale, xlabel) = axes[row, col], _SCALE[cost]
            for group, entry in groups.items():
                points = {n: v for n, v in entry["variants"].items()
                          if v[cost] is not None and v[kind]["mean"] is not None}
                for name, v in points.items():
                    ax.errorbar(v[cost] * scale, v[kind]["mean"], yerr=v[kind]["std"] or 0, color=colors[group],
                                marker=MARKERS.get(v["strategy"], "o"), ms=11 if name == entry["baseline"] else 6,
                                mec="black" if name == entry["baseline"] else colors[group], capsize=2, ls="none",
                                label=group)
                line = entry["front"].get(kind, {}).get(cost, [])
                ax.plot([points[n][cost] * scale for n in line], [points[n][kind]["mean"] for n in line],
                        color=colors[group], lw=1.2, alpha=0.8)
            label_axes(ax, xlabel=xlabel, ylabel=f"final top-1 (%), {KIND_TITLE[kind]}")
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 5), useMathText=True)  # tiny models' MACs
    for strategy, marker in MARKERS.items():
        axes[0, 0].plot([], [], marker=marker, color="gray", ls="none", label=strategy)
    legend_outside(fig)
    save_figure(fig, path)


def _fig_degree(pareto: dict, colors: dict[str, str], path: Path) -> None:
    groups = {g: e for g, e in pareto["groups"].items() if e["fits"]}
    fig = new_figure(4.6 * len(groups) + 2, 3.8)
    for ax, (group, entry) in zip(np.atleast_1d(fig.subplots(1, len(groups), squeeze=False)[0]), groups.items(),
                                  strict=True):
        for fit in entry["fits"]:
            grid = 100 * np.asarray(fit["grid"])
            marker = MARKERS.get(fit["strategy"], "o")
            ax.fill_between(grid, fit["low"], fit["high"], color=colors[group], alpha=0.15)
            ax.plot(grid, fit["mean"], color=colors[group], ls="-" if marker == "o" else "-.",
                    label=f"{group}, {fit['strategy']} fit")
            for name in fit["variants"]:
                v, base = entry["variants"][name][fit["kind"]], name == entry["baseline"]
                ax.errorbar(100 * entry["variants"][name]["kept"], v["mean"], yerr=v["std"] or 0, color=colors[group],
                            marker="*" if base else marker, ms=11 if base else 6, mec="black" if base else None,
                            ls="none", capsize=2)
            ax.axhline(fit["threshold"], color="gray", ls="--", lw=1, label="baseline minus delta")
            if fit["degree"]["reached"]:
                ax.axvline(100 * fit["degree"]["kept"], color=colors[group], ls=":", lw=1)
        ax.invert_xaxis()  # reduction grows to the right
        label_axes(ax, xlabel="MLP parameters kept (% of the base model's)",
                   ylabel=f"final top-1 (%), {KIND_TITLE[entry['fits'][0]['kind']]}", title=group)
    legend_outside(fig)
    save_figure(fig, path)
