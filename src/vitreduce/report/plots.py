"""What every report figure shares: one colour per variant, baseline-first order, axes with units and integer
epoch ticks, legends outside the data, and PNG + SVG output (same stem).

matplotlib's Figure renders with Agg (PNG) and its SVG backend; pyplot and its global state are not used.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from vitreduce.files import atomic_write
from vitreduce.report.runs import RunMetrics, StudyRuns

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf")  # matplotlib's tab10, spelled out so a variant's colour does not depend on rcParams


def variant_colors(study: StudyRuns) -> dict[str, str]:
    """One colour per variant, the same in every figure of a report: the baseline takes the first colour, the
    others follow in the study's order (cycling after ten)."""
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(ordered_variants(study))}


def ordered_variants(study: StudyRuns) -> list[str]:
    """The variants with the baseline first, then the study's order."""
    return [study.baseline, *(v for v in study.variants if v != study.baseline)] if study.baseline in \
        study.variants else list(study.variants)


def new_figure(width: float, height: float = 4.2):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def one_axes(study: StudyRuns):
    """(figure, its single axes, the variants' colours): the start of every one-panel figure."""
    fig = new_figure(8)
    return fig, fig.subplots(), variant_colors(study)


def label_axes(ax, *, xlabel: str, ylabel: str, title: str | None = None, integer_x: bool = False) -> None:
    """Axis labels (with their units) and, for epochs, integer ticks only."""
    from matplotlib.ticker import MaxNLocator

    ax.set(xlabel=xlabel, ylabel=ylabel)
    if title:
        ax.set_title(title)
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def plain_log_ticks(ax) -> None:
    """Readable ticks on a log-scale y axis: plain numbers (2, 2.5, 3; never "3 x 10^0"), a few per decade
    when the data span less than two decades, 1-2-5 per decade over wider spans."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    low, high = ax.get_ylim()
    narrow = high / low < 100 if low > 0 else False
    ax.yaxis.set_major_locator(MaxNLocator(nbins=8) if narrow else LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(low, high)


def legend_outside(fig, last: tuple[str, ...] = ()) -> None:
    """One legend for the whole figure, to the right of the axes, so it never covers data; entries whose label
    starts with one of `last` (keys of what is drawn, not data series) come after the others."""
    seen: dict[str, object] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    seen = dict(sorted(seen.items(), key=lambda item: item[0].startswith(last) if last else False))
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside right upper", fontsize=8)


def save_figure(fig, path: Path) -> None:
    """``path`` (PNG, what the report links) and an SVG of the same stem beside it (vector, for papers)."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    atomic_write(path.with_suffix(".svg"), lambda tmp: fig.savefig(tmp, format="svg"))


def band(runs: Sequence[RunMetrics], series: Callable[[RunMetrics], tuple | None], center=np.mean):
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


def no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center")
