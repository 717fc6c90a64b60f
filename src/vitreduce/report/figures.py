"""The report's figures (figures/*.png, each with an SVG beside it): top-1 vs epoch, the paired difference
from the baseline per epoch, per-seed strip plots of final top-1 and of peak-to-final, the drawdown from the
running best, train loss per epoch with its spikes, the per-step loss and gradient norm with their step
spikes (vitreduce.report.figures_steps, runs with steps.jsonl), and the sharpness figures. Each is defined in
docs/metrics.md; what they share is in vitreduce.report.plots.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vitreduce.report.figures_steps import step_figures
from vitreduce.report.plots import (
    band,
    label_axes,
    legend_outside,
    new_figure,
    no_data,
    one_axes,
    ordered_variants,
    save_figure,
    variant_colors,
)
from vitreduce.report.records import VariantEntry
from vitreduce.report.runs import KIND_TITLE, MODEL_KINDS, ModelMetrics, RunMetrics, StudyRuns
from vitreduce.report.sharpness_section import sharpness_figures
from vitreduce.statistics.sample import Sample

_FIGURES = (  # (file name, caption) of the figures every report has
    ("top1_vs_epoch.png", "Top-1 vs epoch, raw (left) and EMA (right): mean over seeds, band = min-max over "
                          "seeds (at each epoch, over the runs that reached it)."),
    ("top1_difference.png", "Paired difference from the baseline per epoch (variant minus baseline top-1, pp, "
                            "over the seeds both ran): mean, band = t-based 95% confidence interval (n >= 2)."),
    ("final_top1.png", "Final top-1 per seed (dots), baseline first; a bar marks the mean over seeds."),
    ("peak_to_final.png", "Peak-to-final degradation (pp) per seed (dots), baseline first; a bar marks the mean. "
                          "It cannot be negative."),
    ("drawdown.png", "Drawdown from the running best: best top-1 so far minus top-1 (pp) per epoch, median over "
                     "seeds, band = min-max."),
    ("train_loss.png", "Train loss vs epoch: mean over seeds, band = min-max over seeds; x marks a loss spike."),
)


def write_figures(study: StudyRuns, summary: dict[str, VariantEntry], fig_dir: Path,
                  paired_sharpness=()) -> list[tuple[str, str]]:
    """Write every figure the study's data allow into ``fig_dir``; returns (file name, caption) pairs.
    ``paired_sharpness``: the report's paired sharpness tests (report.sharpness_paired), drawn as one figure."""
    fig_dir.mkdir(exist_ok=True)
    top1, diff, final, p2f, drawdown, loss = (fig_dir / name for name, _ in _FIGURES)
    _fig_top1(study, top1)
    _fig_difference(study, diff)
    _fig_strip(study, final, lambda m: m.top1_final, "final top-1 (%)", "final top-1 per seed")
    _fig_strip(study, p2f, lambda m: m.p2f, "peak-to-final (pp)", "peak-to-final degradation per seed",
               non_negative=True)
    _fig_drawdown(study, drawdown)
    _fig_loss(study, loss)
    return [*_FIGURES, *step_figures(study, fig_dir), *sharpness_figures(study, fig_dir, list(paired_sharpness))]


def _kind_axes(width: float = 11):
    fig = new_figure(width)
    return fig, dict(zip(MODEL_KINDS, fig.subplots(1, 2, sharey=True), strict=True))


def _top1_series(kind: str):
    def series(run: RunMetrics):
        m = run.model(kind)
        return None if m is None else (m.epochs, m.top1)
    return series


def _drawdown_series(kind: str):
    def series(run: RunMetrics):
        m = run.model(kind)
        return None if m is None else (m.epochs, np.maximum.accumulate(m.top1) - np.array(m.top1))
    return series


def _fig_bands(study: StudyRuns, path: Path, series: Callable, ylabel: str, title: str, center=np.mean,
               non_negative: bool = False) -> None:
    """Per model kind, a line (center over seeds) and a min-max band per variant."""
    fig, axes = _kind_axes()
    colors = variant_colors(study)
    for kind, ax in axes.items():
        drawn = False
        for variant in ordered_variants(study):
            runs = study.variants[variant]
            epochs, mid, lo, hi = band(runs, series(kind), center=center)
            if epochs.size:
                ax.plot(epochs, mid, color=colors[variant], label=f"{variant} (n={len(runs)})")
                ax.fill_between(epochs, lo, hi, color=colors[variant], alpha=0.2, linewidth=0)
                drawn = True
        if not drawn:
            no_data(ax, f"no {KIND_TITLE[kind]} in these runs")
        label_axes(ax, xlabel="epoch", ylabel=ylabel, title=f"{title}, {KIND_TITLE[kind]}", integer_x=True)
    _floor_at_zero(axes, non_negative)
    legend_outside(fig)
    save_figure(fig, path)


def _floor_at_zero(axes: dict, non_negative: bool) -> None:
    """Start a non-negative quantity's shared y axis at 0, once every panel is drawn: fixing the limits
    earlier would freeze them at the first panel's data and clip the other panels'."""
    if non_negative:
        top = max(ax.get_ylim()[1] for ax in axes.values())
        next(iter(axes.values())).set_ylim(0, top)


def _fig_top1(study: StudyRuns, path: Path) -> None:
    _fig_bands(study, path, _top1_series, "top-1 (%)", "top-1")


def _fig_drawdown(study: StudyRuns, path: Path) -> None:
    _fig_bands(study, path, _drawdown_series, "drawdown from running best (pp)", "drawdown", center=np.median,
               non_negative=True)


def _paired_difference(base: list[RunMetrics], runs: list[RunMetrics], kind: str):
    """Epochs, mean, lower, upper of variant minus baseline top-1 over the seeds both ran (band NaN at n < 2)."""
    by_seed = {r.seed: r.model(kind) for r in base if r.model(kind) is not None}
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        m, b = run.model(kind), by_seed.get(run.seed)
        if m is None or b is None:
            continue
        b_top1 = dict(zip(b.epochs, b.top1, strict=True))
        for epoch, value in zip(m.epochs, m.top1, strict=True):
            if epoch in b_top1:
                by_epoch.setdefault(epoch, []).append(value - b_top1[epoch])
    epochs = sorted(by_epoch)
    samples = [Sample(tuple(by_epoch[e])) for e in epochs]
    mean = np.array([x.mean for x in samples])
    bounds = np.array([_t_band(x) for x in samples]).reshape(len(samples), 2)
    return np.array(epochs), mean, bounds[:, 0], bounds[:, 1]


def _t_band(sample: Sample) -> tuple[float, float]:
    """The t-based 95% interval of the mean; zero width for identical values, none (NaN) for one value."""
    if sample.n < 2:
        return math.nan, math.nan
    return sample.t_interval(0.95) or (sample.mean, sample.mean)


def _fig_difference(study: StudyRuns, path: Path) -> None:
    fig, axes = _kind_axes()
    colors = variant_colors(study)
    base = study.variants.get(study.baseline, [])
    for kind, ax in axes.items():
        drawn = False
        for variant in ordered_variants(study)[1:]:
            epochs, mean, lo, hi = _paired_difference(base, study.variants[variant], kind)
            if epochs.size:
                ax.plot(epochs, mean, color=colors[variant], label=f"{variant} - {study.baseline}")
                ax.fill_between(epochs, lo, hi, color=colors[variant], alpha=0.2, linewidth=0)
                drawn = True
        ax.axhline(0.0, color="k", linewidth=0.8)
        if not drawn:
            no_data(ax, f"no seed paired with the baseline ({KIND_TITLE[kind]})")
        label_axes(ax, xlabel="epoch", ylabel=f"top-1 minus {study.baseline} (pp)", integer_x=True,
                   title=f"paired difference from the baseline, {KIND_TITLE[kind]}")
    legend_outside(fig)
    save_figure(fig, path)


def _fig_strip(study: StudyRuns, path: Path, value: Callable[[ModelMetrics], float], ylabel: str, title: str,
               non_negative: bool = False) -> None:
    """Per model kind, one dot per seed over the variants (baseline first), the mean as a horizontal bar."""
    names = ordered_variants(study)
    colors = variant_colors(study)
    fig, axes = _kind_axes(max(9.0, 1.8 * len(names) + 4))
    fig.suptitle(title)
    for kind, ax in axes.items():
        for i, variant in enumerate(names):
            pts = [value(r.model(kind)) for r in study.variants[variant] if r.model(kind) is not None]
            if not pts:
                continue
            jitter = np.linspace(-0.12, 0.12, len(pts)) if len(pts) > 1 else np.zeros(1)
            ax.scatter(i + jitter, pts, color=colors[variant], s=22, zorder=3, clip_on=False,
                       label=f"{variant} (n={len(pts)})")
            ax.plot([i - 0.25, i + 0.25], [np.mean(pts)] * 2, color="k", linewidth=1.5, zorder=4)
        ax.set_xticks(range(len(names)), names)
        ax.set_xlim(-0.6, len(names) - 0.4)
        label_axes(ax, xlabel="variant", ylabel=ylabel, title=KIND_TITLE[kind])
    _floor_at_zero(axes, non_negative)
    legend_outside(fig)
    save_figure(fig, path)


def _fig_loss(study: StudyRuns, path: Path) -> None:
    fig, ax, colors = one_axes(study)
    for variant in ordered_variants(study):
        runs, color = study.variants[variant], colors[variant]
        epochs, mean, lo, hi = band(runs, lambda r: (r.loss_epochs, r.train_loss))
        if not epochs.size:
            continue
        ax.plot(epochs, mean, color=color, label=f"{variant} (n={len(runs)})")
        ax.fill_between(epochs, lo, hi, color=color, alpha=0.2, linewidth=0)
        for r in runs:  # mark each run's loss spikes on its own loss
            loss = dict(zip(r.loss_epochs, r.train_loss, strict=True))
            spikes = [e for e in r.loss_spike_epochs if np.isfinite(loss[e])]
            ax.scatter(spikes, [loss[e] for e in spikes], color=color, marker="x", zorder=3)
    label_axes(ax, xlabel="epoch", ylabel="train loss (cross-entropy)", title="train loss (x: loss spikes)",
               integer_x=True)
    legend_outside(fig)
    save_figure(fig, path)
