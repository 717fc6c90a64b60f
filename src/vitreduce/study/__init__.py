"""Studies: variants x seeds of one recipe as run directories, their planning and execution.

Modules: ``spec`` (the typed study spec), ``sweep`` (its ``sweep:`` section: base models x reduction
grids as named variants, and their costs for ``--dry-run``), ``plan`` (its runs and the checks before any
starts), ``launch`` (one run: lock, log, outcome), ``pool`` (``--jobs N`` processes), ``slurm`` (one SLURM
job per run, through submitit; what each job's tasks run: ``slurm_job``), ``status`` (where each run
stands), ``runner`` (``run_study``), ``analysis`` (sharpness and landscapes of finished runs),
``reporting`` (the report, vitreduce.report, told how the spec names a sweep's variants).
"""
from vitreduce.lazy import lazy_exports

# Imported on first use (vitreduce.lazy): a SLURM job's entry (vitreduce.study.job) imports no torch.
_EXPORTS = {"write_report": "vitreduce.study.reporting", "StudyResult": "vitreduce.study.runner",
            "print_results": "vitreduce.study.runner", "run_study": "vitreduce.study.runner",
            "StudySpec": "vitreduce.study.spec", "load_spec": "vitreduce.study.spec"}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["StudyResult", "StudySpec", "load_spec", "print_results", "run_study", "write_report"]
