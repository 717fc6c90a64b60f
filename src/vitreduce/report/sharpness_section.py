"""The report's sharpness section: a table per variant (mean over seeds), the paired tests against the
baseline (vitreduce.report.sharpness_paired), what each number can support, and the sharpness figures
(vitreduce.report.figures_landscape and the paired differences).

Pure functions of the files vitreduce.study.analysis wrote into the run directories; a study without
them gets no section. Files written before ASAM and the normalised trace were recorded still report:
tr(H) / P is computed from their trace and parameter count, and their ASAM cell is n/a.
"""
from __future__ import annotations

from pathlib import Path

from vitreduce.report.analysis_files import ANALYSED_CHECKPOINTS, read_run_analysis
from vitreduce.report.figures_landscape import landscape_figures
from vitreduce.report.formatting import NA, fixed, places, pm_column
from vitreduce.report.render import Block, Bullets, Heading, Paragraph, Table
from vitreduce.report.runs import StudyRuns
from vitreduce.report.sharpness_paired import SharpnessTest, reading, sharpness_difference_figure, sharpness_tests
from vitreduce.sharpness.measures import per_parameter
from vitreduce.statistics.family import CORRECTION_NAME, StatisticsConfig
from vitreduce.statistics.paired import TTest
from vitreduce.statistics.pvalue import fmt_p
from vitreduce.statistics.sample import mean_std

# The figures comparable across variants first, then those that compare seeds of one variant.
_MEASURES = (("loss", lambda r: r.get("loss")),
             ("trace / parameter", lambda r: per_parameter(r.get("trace"), r.get("parameters"))),
             ("ASAM sharpness", lambda r: r.get("asam_sharpness")),
             ("top eigenvalue", lambda r: r["top_eigenvalues"][0] if r.get("top_eigenvalues") else None),
             ("Hessian trace", lambda r: r.get("trace")),
             ("SAM sharpness", lambda r: r.get("sam_sharpness")))


def _results(study: StudyRuns) -> dict[str, dict[str, list[dict]]]:
    """{variant: {checkpoint: [one result per run that has it]}}, checkpoints without results left out."""
    results = {}
    for variant, runs in study.variants.items():
        analyses = [read_run_analysis(run.run_dir) for run in runs]
        results[variant] = {which: [a[which] for a in analyses if which in a] for which in ANALYSED_CHECKPOINTS}
        results[variant] = {which: present for which, present in results[variant].items() if present}
    return results


def sharpness_rows(study: StudyRuns) -> list[list[str]]:
    """One row per variant and checkpoint with each measure's mean ± std over seeds (empty: no analysis); each
    measure's column in one format, to the precision of its most precise spread (report.results_table's)."""
    keys, stats = [], []
    for variant, by_checkpoint in _results(study).items():
        for which, present in by_checkpoint.items():
            keys.append((variant, which, present))
            values = [[v for v in map(measure, present) if v is not None] for _, measure in _MEASURES]
            stats.append([mean_std(v)[:2] for v in values])
    columns = [pm_column([row[j] for row in stats], digits=_digits([row[j][0] for row in stats]))
               for j in range(len(_MEASURES))]
    return [[variant, which, str(len(present)), *(column[i] for column in columns),
             f"{sum(bool(r.get('converged')) for r in present)}/{len(present)}"]
            for i, (variant, which, present) in enumerate(keys)]


def _digits(means: list[float | None]) -> int:
    """Decimals of a column without any spread (n = 1): 3 significant digits of its smallest nonzero mean."""
    return max((places(m, 3) for m in means if m), default=2)


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


def sharpness_section(study: StudyRuns, config: StatisticsConfig | None = None,
                      tests: list[SharpnessTest] | None = None) -> list[Block]:
    """The report's sharpness section: the table, the paired tests against the baseline (the statistics
    settings' alpha and correction; ``tests``: sharpness_tests' result where already computed) and what it
    can support (nothing without analysis files)."""
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
        *paired_blocks(sharpness_tests(study, config or StatisticsConfig()) if tests is None else tests,
                       study.baseline, config),
        Bullets(sharpness_caveats(study)),
    ]


def _difference(t: TTest) -> str:
    """mean [CI] to the precision of the interval's half-width (2 significant digits)."""
    if t.ci_low is None:
        return f"{t.mean_diff:+.3g}"
    d = places((t.ci_high - t.ci_low) / 2, 2)
    signed = [("+" if x >= 0 else "") + fixed(x, d) for x in (t.mean_diff, t.ci_low, t.ci_high)]
    return f"{signed[0]} [{signed[1]}, {signed[2]}]"


def paired_blocks(tests: list[SharpnessTest], baseline: str, config: StatisticsConfig | None) -> list[Block]:
    """The paired t-tests of sharpness against the baseline, one exploratory family (nothing without a pair)."""
    if not tests:
        return []
    config = config or StatisticsConfig()
    rows = [[t.variant, t.checkpoint, t.measure, str(t.test.n), _difference(t.test),
             NA if t.test.p is None else fmt_p(t.test.p, config.alpha),
             NA if t.p_adjusted is None else fmt_p(t.p_adjusted, config.alpha),
             reading(t, config.alpha)] for t in tests]
    testable = sum(t.p_adjusted is not None for t in tests)
    size = f"The {len(tests)} comparisons ({testable} testable; an untestable one counts as p = 1, as in the " \
           "seed-level families)"
    return [
        Paragraph(f"Exploratory: paired difference from {baseline} (variant minus baseline over the seeds both "
                  f"measured; larger = sharper), {1 - config.alpha:.0%} t-based CI, two-sided paired t-test over "
                  f"seeds. {size} form one exploratory family of their own, adjusted "
                  f"with {CORRECTION_NAME[config.correction]} at alpha={config.alpha:g}: they suggest what to "
                  "test next and confirm nothing."),
        Table(["variant", "checkpoint", "measure", "paired seeds", f"difference vs {baseline} [CI]", "raw p",
               "adjusted p", "exploratory reading"], rows),
    ]


def sharpness_figures(study: StudyRuns, fig_dir: Path, tests: list[SharpnessTest]) -> list[tuple[str, str]]:
    """Write the sharpness figures the runs' analysis allows (landscapes, the paired differences of ``tests``);
    (name, caption)."""
    return [*landscape_figures(study, fig_dir), *sharpness_difference_figure(study, fig_dir, tests)]
