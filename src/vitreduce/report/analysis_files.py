"""The analysis files of a run (RUN/analysis/, written by a study's analysis step), as the report reads them:
sharpness results and the segmentation probe's results."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, get_args

ANALYSIS_DIR = "analysis"
AnalysedCheckpoint = Literal["final", "peak"]  # the last epoch's weights, and the best epoch's (checkpoints/best)
ANALYSED_CHECKPOINTS: tuple[str, ...] = get_args(AnalysedCheckpoint)


def read_run_analysis(run_dir: str | Path) -> dict[str, dict]:
    """``{"final": {...}, "peak": {...}}``: the sharpness results a run has (missing ones left out)."""
    results = {}
    for which in ANALYSED_CHECKPOINTS:
        path = Path(run_dir) / ANALYSIS_DIR / f"sharpness_{which}.json"
        if path.is_file():
            results[which] = json.loads(path.read_text())
    return results


SEGMENTATION = (ANALYSIS_DIR, "segmentation")  # a study's segmentation probe of the run (vitreduce.probe's files)


def read_run_probe(run_dir: str | Path) -> dict | None:
    """The run's segmentation-probe results (RUN/analysis/segmentation/results.json), or None."""
    path = Path(run_dir).joinpath(*SEGMENTATION, "results.json")
    return json.loads(path.read_text()) if path.is_file() else None
