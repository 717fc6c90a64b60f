"""The report's sharpness section: a table per variant (mean over seeds) and the landscape figures.

Pure functions of the files vitreduce.study.analysis wrote into the run directories; a study without
them gets no section.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from vitreduce.files import atomic_write
from vitreduce.study.analysis import ANALYSED_CHECKPOINTS, ANALYSIS_DIR, read_run_analysis
from vitreduce.study.runs import StudyRuns, mean_std

_MEASURES = (("top eigenvalue", lambda r: r["top_eigenvalues"][0] if r.get("top_eigenvalues") else None),
             ("Hessian trace", lambda r: r.get("trace")),
             ("SAM sharpness", lambda r: r.get("sam_sharpness")),
             ("loss", lambda r: r.get("loss")))


def _cell(values: list[float]) -> str:
    mean, std, n = mean_std(values)
    if n == 0:
        return "n/a"
    return f"{mean:.4g}" if std is None else f"{mean:.4g} ± {std:.2g}"


def sharpness_rows(study: StudyRuns) -> list[list[str]]:
    """One row per variant and checkpoint with each measure's mean ± std over seeds (empty: no analysis)."""
    rows = []
    for variant, runs in study.variants.items():
        results = [read_run_analysis(run.run_dir) for run in runs]
        for which in ANALYSED_CHECKPOINTS:
            present = [r[which] for r in results if which in r]
            if not present:
                continue
            cells = [_cell([v for v in map(measure, present) if v is not None]) for _, measure in _MEASURES]
            converged = sum(bool(r.get("converged")) for r in present)
            rows.append([variant, which, str(len(present)), *cells, f"{converged}/{len(present)}"])
    return rows


def sharpness_headers() -> list[str]:
    return ["variant", "checkpoint", "n", *(name for name, _ in _MEASURES), "eigenvalues converged"]


def _read_curve(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    if not path.is_file():
        return None
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return np.array([float(r["alpha"]) for r in rows]), np.array([float(r["loss"]) for r in rows])


def _curve_figure(study: StudyRuns, csv_name: str, path: Path, xlabel: str, title: str) -> bool:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    drawn = False
    for i, (variant, runs) in enumerate(study.variants.items()):
        curves = [c for c in (_read_curve(r.run_dir / ANALYSIS_DIR / "landscape" / csv_name) for r in runs) if c]
        if not curves or any(not np.array_equal(c[0], curves[0][0]) for c in curves):
            continue
        losses = np.stack([c[1] for c in curves])  # (seeds, points)
        ax.plot(curves[0][0], losses.mean(0), color=f"C{i}", label=f"{variant} (n={len(curves)})")
        ax.fill_between(curves[0][0], losses.min(0), losses.max(0), color=f"C{i}", alpha=0.2, linewidth=0)
        drawn = True
    if not drawn:
        return False
    ax.set(xlabel=xlabel, ylabel="training loss", title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return True


def sharpness_figures(study: StudyRuns, fig_dir: Path) -> list[tuple[str, str]]:
    """Write the landscape figures that the runs' data allow; returns (file name, caption) pairs."""
    figures = []
    if _curve_figure(study, "surface_1d.csv", fig_dir / "landscape_1d.png", "alpha (filter-normalised direction)",
                     "1D loss surface around the final checkpoint"):
        figures.append(("landscape_1d.png", "Training loss along one filter-normalised random direction around "
                                            "each final checkpoint: mean over seeds, band = min-max."))
    if _curve_figure(study, "interpolation.csv", fig_dir / "interpolation.png",
                     "alpha: (1 - alpha) w_peak + alpha w_final", "Interpolation peak -> final checkpoint"):
        figures.append(("interpolation.png", "Training loss on the line from the peak epoch's checkpoint "
                                             "(alpha 0) to the final one (alpha 1): mean over seeds, band = min-max."))
    return figures
