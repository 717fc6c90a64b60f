"""Studies: variants x seeds of one recipe as run directories, then statistics and the report.

Modules: ``spec`` (the typed study spec), ``sweep`` (its ``sweep:`` section: base models x reduction
grids as named variants, and their costs for ``--dry-run``), ``pareto`` and ``report_pareto`` (accuracy
against cost: fronts, the accuracy-vs-degree fit, the report's Pareto section), ``plan`` (its runs and
the checks before any starts),
``launch`` (one run: lock, log, outcome), ``pool`` (``--jobs N`` processes), ``slurm`` (one SLURM job
per run, through submitit), ``status`` (where each run stands), ``runner`` (``run_study``),
``analysis`` (sharpness and landscapes of finished runs), ``runs`` (per-run and per-variant metrics from
run directories), ``stats`` (tests against the baseline), ``family`` (the confirmatory and exploratory
families, their correction and verdicts), ``power`` (what the seeds could detect), ``report``,
``report_stats``, ``report_sharpness``, ``sharpness_paired`` (sharpness against the baseline), ``formatting``
(mean ± std in tables), ``figures``, ``figures_steps``, ``figures_landscape`` and ``render`` (report.md,
report.html, summary.json, figures/).
"""
from vitreduce.lazy import lazy_exports

# Imported on first use (vitreduce.lazy): a SLURM job's entry (vitreduce.study.job) imports no torch.
_EXPORTS = {"write_report": "vitreduce.study.report", "StudyResult": "vitreduce.study.runner",
            "print_results": "vitreduce.study.runner", "run_study": "vitreduce.study.runner",
            "StudySpec": "vitreduce.study.spec", "load_spec": "vitreduce.study.spec"}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["StudyResult", "StudySpec", "load_spec", "print_results", "run_study", "write_report"]
