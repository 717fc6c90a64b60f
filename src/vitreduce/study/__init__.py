"""Studies: variants x seeds of one recipe as run directories, then statistics and the report.

Modules: ``spec`` (the typed study spec), ``plan`` (its runs and the checks before any starts),
``launch`` (one run: lock, log, outcome), ``pool`` (``--jobs N`` processes), ``runner`` (``run_study``),
``analysis`` (sharpness and landscapes of finished runs), ``runs`` (per-run and per-variant metrics from
run directories), ``stats`` (tests against the baseline), ``family`` (the confirmatory and exploratory
families, their correction and verdicts), ``power`` (what the seeds could detect), ``report``,
``report_stats``, ``report_sharpness``, ``figures`` and ``render`` (report.md, report.html, summary.json,
figures/).
"""
from vitreduce.study.report import write_report
from vitreduce.study.runner import StudyResult, print_results, run_study
from vitreduce.study.spec import StudySpec, load_spec

__all__ = ["StudyResult", "StudySpec", "load_spec", "print_results", "run_study", "write_report"]
