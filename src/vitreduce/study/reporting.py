"""A study's report: vitreduce.report.write_report told how the study spec names a sweep's variants."""
from __future__ import annotations

from pathlib import Path

from vitreduce.report.write import ReportPaths
from vitreduce.report.write import write_report as _write_report
from vitreduce.study.sweep import sweep_labels


def write_report(study_dir: Path | str, baseline: str | None = None, **options) -> ReportPaths:
    """Write STUDY_DIR's report (options as vitreduce.report.write.write_report's), the variants of study.yaml's
    ``sweep:`` named with their base model's label."""
    return _write_report(study_dir, baseline, labels_of=sweep_labels, **options)
