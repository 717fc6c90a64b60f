"""The study report: reading a study's run directories and writing report.md, report.html, summary.json,
results.csv and figures/ (every figure defined in docs/metrics.md). Nothing here trains or plans.

Records: ``records`` (what summary.json holds: a ``VariantEntry`` per variant and the study-level
``StudyResults``; every section below works on them), ``pareto_records`` (the Pareto section's), ``codec`` (their
one JSON serialisation), ``summary_file`` (summary.json written from them and read back into them).
Reading: ``runs`` (per-run and per-variant metrics of the run directories), ``outcome`` (finished, diverged,
unfinished or unreadable), ``spikes`` (loss spikes of epochs and logged steps), ``throughput``
(throughput.json), ``analysis_files`` (a run's sharpness files), ``compare`` (a variant against the
baseline, runs paired by seed, predictions.csv read). Claims: ``stability`` (divergence per variant and its
test), ``headline`` (the generated sentences and their caveats), ``pareto`` (fronts, the descriptive
accuracy-vs-degree fit and the degree statement's non-inferiority test), ``sharpness_paired`` (sharpness
against the baseline). Document: ``write`` (``write_report``, tables), ``runs_section``,
``stats_section``, ``sharpness_section``, ``pareto_section``, ``formatting`` (numbers in tables), ``figures``,
``figures_steps``, ``figures_landscape``, ``plots``, ``render`` (markdown and HTML), ``flat`` (results.csv).
Every test is computed by vitreduce.statistics.
"""
from vitreduce.lazy import lazy_exports

# Imported on first use (vitreduce.lazy): the names of a run's analysis files (`analysis_files`) import no torch, so
# that a study spec needs none.
_EXPORTS = {
    "format_results_table": "vitreduce.report.write",
    "write_report": "vitreduce.report.write",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["format_results_table", "write_report"]
