"""The report's sharpness section: a table per variant (mean over seeds), what each number can support,
and the landscape figures.

Pure functions of the files vitreduce.study.analysis wrote into the run directories; a study without
them gets no section. Files written before ASAM and the normalised trace were recorded still report:
tr(H) / P is computed from their trace and parameter count, and their ASAM cell is n/a.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from vitreduce.sharpness.measures import per_parameter
from vitreduce.study.analysis import ANALYSED_CHECKPOINTS, ANALYSIS_DIR, read_run_analysis
from vitreduce.study.plots import label_axes, legend_outside, one_axes, ordered_variants, save_figure
from vitreduce.study.render import Block, Bullets, Heading, Paragraph, Table
from vitreduce.study.runs import StudyRuns, mean_std

# The figures comparable across variants first, then those that compare seeds of one variant.
_MEASURES = (("loss", lambda r: r.get("loss")),
             ("trace / parameter", lambda r: per_parameter(r.get("trace"), r.get("parameters"))),
             ("ASAM sharpness", lambda r: r.get("asam_sharpness")),
             ("top eigenvalue", lambda r: r["top_eigenvalues"][0] if r.get("top_eigenvalues") else None),
             ("Hessian trace", lambda r: r.get("trace")),
             ("SAM sharpness", lambda r: r.get("sam_sharpness")))


def _cell(values: list[float]) -> str:
    mean, std, n = mean_std(values)
    if n == 0:
        return "n/a"
    return f"{mean:.4g}" if std is None else f"{mean:.4g} ± {std:.2g}"


def _results(study: StudyRuns) -> dict[str, dict[str, list[dict]]]:
    """{variant: {checkpoint: [one result per run that has it]}}, checkpoints without results left out."""
    results = {}
    for variant, runs in study.variants.items():
        analyses = [read_run_analysis(run.run_dir) for run in runs]
        results[variant] = {which: [a[which] for a in analyses if which in a] for which in ANALYSED_CHECKPOINTS}
        results[variant] = {which: present for which, present in results[variant].items() if present}
    return results


def sharpness_rows(study: StudyRuns) -> list[list[str]]:
    """One row per variant and checkpoint with each measure's mean ± std over seeds (empty: no analysis)."""
    rows = []
    for variant, by_checkpoint in _results(study).items():
        for which, present in by_checkpoint.items():
            cells = [_cell([v for v in map(measure, present) if v is not None]) for _, measure in _MEASURES]
            converged = sum(bool(r.get("converged")) for r in present)
            rows.append([variant, which, str(len(present)), *cells, f"{converged}/{len(present)}"])
    return rows


def sharpness_headers() -> list[str]:
    return ["variant", "checkpoint", "n", *(name for name, _ in _MEASURES), "eigenvalues converged"]


def _values(results: list[dict], key: str) -> str:
    """The distinct values of an option over the results, e.g. '0.05' or '0.05, 0.1'."""
    return ", ".join(f"{v:g}" for v in sorted({r[key] for r in results if r.get(key) is not None})) or "n/a"


def sharpness_caveats(study: StudyRuns) -> list[str]:
    """What each column can and cannot support, with the radii the results were measured with."""
    results = [r for by_checkpoint in _results(study).values() for rs in by_checkpoint.values() for r in rs]
    with_asam = [r for r in results if r.get("asam_sharpness") is not None]
    settings = f"rho {_values(with_asam, 'asam_rho')}, eta {_values(with_asam, 'eta')}: " if with_asam else ""
    asam = (f"ASAM (Kwon et al. 2021; {settings}T = |w| + eta on weight tensors, 1 on biases, pos_embed and "
            "cls_token) perturbs each weight in "
            "proportion to its size, so a rescaling of weight tensors that keeps the function leaves it "
            "(nearly) unchanged")
    caveats = [
        "Across variants compare trace / parameter and ASAM sharpness. tr(H) / P, the Hutchinson trace over the "
        f"P unique parameters divided by P, does not grow with the parameter count; {asam}. A shared tensor "
        "is one variable whose curvature is the sum over its uses, so tr(H) / P of a model that shares "
        "weights includes that sum: a higher value need not mean a sharper function.",
        "Top eigenvalue, Hessian trace and SAM sharpness compare checkpoints and seeds of one variant only. "
        "The trace sums over every unique parameter and grows with their number; a shared tensor's Hessian "
        "block is the sum of the blocks of its uses; SAM's fixed radius (rho "
        f"{_values(results, 'rho')}) in raw parameter space and the top eigenvalue change when a layer is "
        "scaled by c and the next by 1/c, which computes the same function.",
        "SAM and ASAM are each one ascent step over the subset's mean loss (not m-sharpness). None of these "
        "numbers is a test of the flat-minima hypothesis: they are exploratory, measured on a small fixed "
        "subset with few seeds, and say where the trained models sit, not why they generalise.",
    ]
    if len(with_asam) < len(results):
        caveats.append(f"ASAM is n/a for {len(results) - len(with_asam)} of {len(results)} results: measured "
                       "without `adaptive` or by an older vitreduce; rerun the study's analysis to measure it.")
    return caveats


def sharpness_section(study: StudyRuns) -> list[Block]:
    """The report's sharpness section: the table and what it can support (nothing without analysis files)."""
    rows = sharpness_rows(study)
    if not rows:
        return []
    return [
        Heading("Sharpness (the flat-minima hypothesis)"),
        Paragraph("Measured by the study spec's analysis section on each run's final and/or peak (best epoch) "
                  "checkpoint (options in runs/*/seed*/analysis/sharpness_*.json): the training loss on a fixed "
                  "seeded subset of the training split with the eval transform, in eval mode; mean ± sample std "
                  "over seeds. Larger = sharper."),
        Table(sharpness_headers(), rows),
        Bullets(sharpness_caveats(study)),
    ]


def _read_curve(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    if not path.is_file():
        return None
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return np.array([float(r["alpha"]) for r in rows]), np.array([float(r["loss"]) for r in rows])


def _curve_figure(study: StudyRuns, csv_name: str, path: Path, xlabel: str, title: str) -> bool:
    fig, ax, colors = one_axes(study)
    drawn = False
    for variant in ordered_variants(study):
        runs = study.variants[variant]
        curves = [c for c in (_read_curve(r.run_dir / ANALYSIS_DIR / "landscape" / csv_name) for r in runs) if c]
        if not curves or any(not np.array_equal(c[0], curves[0][0]) for c in curves):
            continue
        losses = np.stack([c[1] for c in curves])  # (seeds, points)
        ax.plot(curves[0][0], losses.mean(0), color=colors[variant], label=f"{variant} (n={len(curves)})")
        ax.fill_between(curves[0][0], losses.min(0), losses.max(0), color=colors[variant], alpha=0.2, linewidth=0)
        drawn = True
    if not drawn:
        return False
    label_axes(ax, xlabel=xlabel, ylabel="training loss (cross-entropy)", title=title)
    legend_outside(fig)
    save_figure(fig, path)
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
