"""The report's landscape figures, from each run's analysis/landscape/*.csv (vitreduce.study.analysis):
the 1D loss surface as the change L(alpha) - L(0) over every random direction and seed, so that a model
whose loss sits higher is not drawn as sharper, and the interpolation peak -> final without the seeds whose
peak checkpoint is their final one (their path has length zero: a flat line that says nothing).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from vitreduce.report.analysis_files import ANALYSIS_DIR
from vitreduce.report.plots import label_axes, legend_outside, one_axes, ordered_variants, save_figure
from vitreduce.report.runs import StudyRuns
from vitreduce.sharpness.landscape_plots import loss_change

Curve = tuple[np.ndarray, np.ndarray]  # (alphas, losses)


def read_curves(path: Path) -> list[Curve]:
    """The curves of a landscape CSV, one per direction (files without a direction column hold one)."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_direction: dict[int, list[dict]] = {}
    for row in rows:
        by_direction.setdefault(int(float(row.get("direction") or 0)), []).append(row)
    return [(np.array([float(r["alpha"]) for r in rs]), np.array([float(r["loss"]) for r in rs]))
            for _, rs in sorted(by_direction.items())]


def is_degenerate(curve: Curve) -> bool:
    """A path whose loss does not change at all: its two ends are the same weights (peak = final)."""
    losses = curve[1]
    return bool(np.ptp(losses) <= 1e-6 * max(1.0, float(np.abs(losses).mean())))


def _run_curves(study: StudyRuns, variant: str, csv_name: str) -> list[list[Curve]]:
    """Per run of the variant that has the file, its curves."""
    found = (read_curves(r.run_dir / ANALYSIS_DIR / "landscape" / csv_name) for r in study.variants[variant])
    return [c for c in found if c]


def _draw(ax, color: str, alphas: np.ndarray, values: np.ndarray, label: str) -> None:
    """Mean over the rows of ``values`` (curves, points) and the min-max band."""
    ax.plot(alphas, values.mean(0), color=color, label=label)
    ax.fill_between(alphas, values.min(0), values.max(0), color=color, alpha=0.2, linewidth=0)


def _fig_directions(study: StudyRuns, path: Path) -> bool:
    fig, ax, colors = one_axes(study)
    drawn = False
    for variant in ordered_variants(study):
        runs = _run_curves(study, variant, "surface_1d.csv")
        curves = [c for run in runs for c in run]
        if not curves or any(not np.array_equal(c[0], curves[0][0]) for c in curves):
            continue
        changes = np.stack([loss_change(*c) for c in curves])  # (seeds x directions, points)
        directions = sorted({len(run) for run in runs})
        _draw(ax, colors[variant], curves[0][0], changes,
              f"{variant} ({len(runs)} seeds x {'/'.join(map(str, directions))} directions)")
        drawn = True
    if not drawn:
        return False
    ax.axhline(0.0, color="k", linewidth=0.8)
    label_axes(ax, xlabel="alpha (filter-normalised direction, units of the weight norm)",
               ylabel="L(alpha) - L(0) (cross-entropy)", title="1D loss surface around the final checkpoint")
    legend_outside(fig)
    save_figure(fig, path)
    return True


def _fig_interpolation(study: StudyRuns, path: Path) -> tuple[int, int] | None:
    """The figure without degenerate seeds; (seeds drawn, seeds left out), None when nothing is drawn."""
    fig, ax, colors = one_axes(study)
    drawn = left_out = 0
    for variant in ordered_variants(study):
        curves = [run[0] for run in _run_curves(study, variant, "interpolation.csv")]
        kept = [c for c in curves if not is_degenerate(c)]
        left_out += len(curves) - len(kept)
        if not kept or any(not np.array_equal(c[0], kept[0][0]) for c in kept):
            continue
        gone = len(curves) - len(kept)
        _draw(ax, colors[variant], kept[0][0], np.stack([c[1] for c in kept]),
              f"{variant} (n={len(kept)}" + (f"; {gone} left out: peak = final)" if gone else ")"))
        drawn += len(kept)
    if not drawn:
        return None
    for mark in (0.0, 1.0):
        ax.axvline(mark, color="grey", linewidth=0.8, linestyle=":")
    label_axes(ax, xlabel="alpha: (1 - alpha) w_peak + alpha w_final", ylabel="training loss (cross-entropy)",
               title="interpolation peak (alpha 0) -> final (alpha 1)")
    legend_outside(fig)
    save_figure(fig, path)
    return drawn, left_out


def landscape_figures(study: StudyRuns, fig_dir: Path) -> list[tuple[str, str]]:
    """Write the landscape figures the runs' analysis allows; returns (file name, caption) pairs."""
    figures = []
    if _fig_directions(study, fig_dir / "landscape_1d.png"):
        figures.append(("landscape_1d.png", "Loss change L(alpha) - L(0) along filter-normalised random directions "
                        "around each final checkpoint (alpha 0; the study spec's analysis.landscape_directions per "
                        "seed): mean over every seed and direction, band = min-max over them."))
    counts = _fig_interpolation(study, fig_dir / "interpolation.png")
    if counts:
        drawn, left_out = counts
        gone = (f" {left_out} of {drawn + left_out} seeds are left out: their best epoch is their last, so peak "
                "and final are the same weights and the path has length zero." if left_out else "")
        figures.append(("interpolation.png", "Training loss on the line from the peak epoch's checkpoint (alpha 0) "
                        f"to the final one (alpha 1): mean over seeds, band = min-max.{gone}"))
    return figures
