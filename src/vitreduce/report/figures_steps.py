"""The report's per-step figures, from each run's steps.jsonl (one record every ``logging.step_every``
optimizer steps): the training loss and the global gradient norm per logged step, one colour per variant,
with the step spikes that vitreduce.report.runs.find_step_spikes detects marked on each run's own values.
Runs without steps.jsonl (older runs, ``logging.step_every: 0``) have no per-step figure.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from vitreduce.report.plots import (
    band,
    label_axes,
    legend_outside,
    one_axes,
    ordered_variants,
    plain_log_ticks,
    save_figure,
)
from vitreduce.report.runs import RunMetrics, StudyRuns

_SPREAD = ("median over the seeds that logged the step, band = min-max over them; x marks a step spike (a "
           "logged loss that is not finite or far above the median of the previous logged losses, robust "
           "z-score; see the training stability section), drawn on that run's own value")
STEP_FIGURES = (  # (file name, series, y label, title, log scale, caption)
    ("step_loss.png", lambda r: r.step_loss, "train loss per step (cross-entropy)", "train loss per logged step",
     False, f"Training loss (cross-entropy of one batch) per logged optimizer step, from steps.jsonl: {_SPREAD}."),
    ("grad_norm.png", lambda r: r.step_grad_norm, "gradient norm (L2, log scale)", "global gradient norm per "
     "logged step", True, "Global gradient norm (L2 over every unique parameter, before clipping) per logged "
     f"optimizer step, from steps.jsonl, log scale: {_SPREAD}."),
)


def step_figures(study: StudyRuns, fig_dir: Path) -> list[tuple[str, str]]:
    """Write the per-step figures the runs' steps.jsonl allow; returns (file name, caption) pairs."""
    return [(name, caption) for name, series, ylabel, title, log, caption in STEP_FIGURES
            if _fig_steps(study, fig_dir / name, series, ylabel, title, log)]


def _spike_points(run: RunMetrics, values: tuple) -> tuple[list[int], list[float]]:
    """The run's spike steps whose value is finite (a non-finite loss is a spike with no point to draw)."""
    by_step = dict(zip(run.steps, values, strict=True))
    steps = [s for s in run.step_spike_steps or () if by_step.get(s) is not None and np.isfinite(by_step[s])]
    return steps, [by_step[s] for s in steps]


def _fig_steps(study: StudyRuns, path: Path, series: Callable[[RunMetrics], tuple], ylabel: str, title: str,
               log: bool) -> bool:
    """Per variant a median line and min-max band over the seeds, spikes marked; False (no file) without steps."""
    fig, ax, colors = one_axes(study)
    drawn = spiked = False
    for variant in ordered_variants(study):
        runs = [r for r in study.variants[variant] if r.steps]
        steps, median, lo, hi = band(runs, lambda r: (r.steps, series(r)), center=np.median)
        if not steps.size:
            continue
        ax.plot(steps, median, color=colors[variant], linewidth=1, label=f"{variant} (n={len(runs)})")
        ax.fill_between(steps, lo, hi, color=colors[variant], alpha=0.2, linewidth=0)
        for run in runs:
            xs, ys = _spike_points(run, series(run))
            ax.scatter(xs, ys, color=colors[variant], marker="x", s=30, zorder=3)
            spiked |= bool(xs)
        drawn = True
    if not drawn:
        return False
    if log:
        ax.set_yscale("log")
        plain_log_ticks(ax)
    label_axes(ax, xlabel="optimizer step", ylabel=ylabel, integer_x=True,
               title=f"{title} ({'x: step spikes' if spiked else 'no step spike'})")
    legend_outside(fig)
    save_figure(fig, path)
    return True
