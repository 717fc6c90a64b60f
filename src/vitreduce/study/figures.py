"""The report's figures (figures/*.png): top-1 vs epoch, peak-to-final degradation, train loss with its
spikes, the gradient norm over training (runs with steps.jsonl), and the sharpness section's landscape
figures. Each is defined in docs/metrics.md.

matplotlib's Figure renders PNG with Agg; pyplot and its global state are not used.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from vitreduce.files import atomic_write
from vitreduce.study.report_sharpness import sharpness_figures
from vitreduce.study.runs import KIND_TITLE, MODEL_KINDS, RunMetrics, StudyRuns

_FIGURES = (  # (file name, caption) of the figures every report has
    ("top1_vs_epoch.png", "Top-1 vs epoch, raw (left) and EMA (right): mean over seeds, band = min-max over "
                          "seeds (at each epoch, over the runs that reached it)."),
    ("peak_to_final.png", "Peak-to-final degradation (pp): bars = mean over seeds, error bars = ±1 sample std "
                          "(ddof=1, none when n=1), dots = individual seeds."),
    ("train_loss.png", "Train loss vs epoch: mean over seeds, band = min-max over seeds; x marks a loss spike."),
)
_GRAD_NORM = ("grad_norm.png", "Global gradient norm (before clipping) vs optimizer step, from steps.jsonl, log "
                               "scale: median over seeds, band = min-max over seeds (at each logged step, over "
                               "the runs that logged it).")


def write_figures(study: StudyRuns, summary: dict, fig_dir: Path) -> list[tuple[str, str]]:
    """Write every figure the study's data allow into ``fig_dir``; returns (file name, caption) pairs."""
    fig_dir.mkdir(exist_ok=True)
    top1, p2f, loss = (fig_dir / name for name, _ in _FIGURES)
    _fig_top1(study, top1)
    _fig_p2f(study, summary, p2f)
    _fig_loss(study, loss)
    steps = [_GRAD_NORM] if _fig_grad_norm(study, fig_dir / _GRAD_NORM[0]) else []
    return [*_FIGURES, *steps, *sharpness_figures(study, fig_dir)]


def _save_png(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def _band(runs: Sequence[RunMetrics], series: Callable[[RunMetrics], tuple | None], center=np.mean):
    """Per epoch (or step) over the runs that reached it: epochs, center (mean), min, max; None values skipped."""
    by_epoch: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        s = series(run)
        if s is not None:
            for epoch, value in zip(*s, strict=True):
                if value is not None:
                    by_epoch[epoch].append(value)
    epochs = sorted(by_epoch)
    vals = [by_epoch[e] for e in epochs]
    return (np.array(epochs), np.array([center(v) for v in vals]), np.array([min(v) for v in vals]),
            np.array([max(v) for v in vals]))


def _top1_series(kind: str):
    def series(run: RunMetrics):
        m = run.model(kind)
        return None if m is None else (m.epochs, m.top1)
    return series


def _fig_top1(study: StudyRuns, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, kind in zip(axes, MODEL_KINDS, strict=True):
        drawn = False
        for i, (variant, runs) in enumerate(study.variants.items()):
            epochs, mean, lo, hi = _band(runs, _top1_series(kind))
            if epochs.size:
                ax.plot(epochs, mean, color=f"C{i}", label=f"{variant} (n={len(runs)})")
                ax.fill_between(epochs, lo, hi, color=f"C{i}", alpha=0.2, linewidth=0)
                drawn = True
        if drawn:
            ax.legend(loc="lower right", fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {KIND_TITLE[kind]} in these runs", transform=ax.transAxes, ha="center")
        ax.set(title=f"top-1, {KIND_TITLE[kind]}", xlabel="epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 (%)")
    _save_png(fig, path)


def _fig_p2f(study: StudyRuns, summary: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(5.0, 1.4 * len(summary) + 2), 4), layout="constrained")
    ax = fig.subplots()
    names = list(study.variants)
    x = np.arange(len(names))
    for j, kind in enumerate(MODEL_KINDS):
        off = (j - 0.5) * 0.38
        have = [i for i, v in enumerate(names) if summary[v][kind]["p2f_mean"] is not None]
        if not have:
            continue
        ax.bar(x[have] + off, [summary[names[i]][kind]["p2f_mean"] for i in have], 0.38,
               yerr=[summary[names[i]][kind]["p2f_std"] or 0.0 for i in have], capsize=4, color=f"C{j}",
               alpha=0.7, label=KIND_TITLE[kind])
        for i, v in enumerate(names):  # every seed's value on its bar
            pts = [r.model(kind).p2f for r in study.variants[v] if r.model(kind) is not None]
            ax.scatter([x[i] + off] * len(pts), pts, color="k", s=10, zorder=3)
    ax.set_xticks(x, names)
    ax.set(ylabel="peak-to-final (pp)", title="peak-to-final degradation (bars: mean, error: ±1 std, dots: seeds)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save_png(fig, path)


def _fig_loss(study: StudyRuns, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, (variant, runs) in enumerate(study.variants.items()):
        epochs, mean, lo, hi = _band(runs, lambda r: (r.loss_epochs, r.train_loss))
        if not epochs.size:
            continue
        ax.plot(epochs, mean, color=f"C{i}", label=f"{variant} (n={len(runs)})")
        ax.fill_between(epochs, lo, hi, color=f"C{i}", alpha=0.2, linewidth=0)
        for r in runs:  # mark each run's loss spikes on its own loss
            loss = dict(zip(r.loss_epochs, r.train_loss, strict=True))
            spikes = [e for e in r.loss_spike_epochs if np.isfinite(loss[e])]
            ax.scatter(spikes, [loss[e] for e in spikes], color=f"C{i}", marker="x", zorder=3)
    ax.set(title="train loss (x: loss spikes)", xlabel="epoch", ylabel="train loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save_png(fig, path)


def _fig_grad_norm(study: StudyRuns, path: Path) -> bool:
    """The gradient norm over training per variant; False (and no file) when no run has a logged step."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    drawn = False
    for i, (variant, runs) in enumerate(study.variants.items()):
        steps, median, lo, hi = _band(runs, lambda r: (r.steps, r.step_grad_norm), center=np.median)
        if not steps.size:
            continue
        logged = sum(bool(r.steps) for r in runs)
        ax.plot(steps, median, color=f"C{i}", label=f"{variant} (n={logged})")
        ax.fill_between(steps, lo, hi, color=f"C{i}", alpha=0.2, linewidth=0)
        drawn = True
    if not drawn:
        return False
    ax.set_yscale("log")
    ax.set(title="global gradient norm (median over seeds, band: min-max)", xlabel="optimizer step",
           ylabel="gradient norm")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    _save_png(fig, path)
    return True
