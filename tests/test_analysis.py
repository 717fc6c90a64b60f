"""Sharpness and landscape of a study's runs: files written once, reused, and reported per variant."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vitreduce.errors import VitreduceError
from vitreduce.study.analysis import AnalysisConfig, analyze_run, checkpoint_path
from vitreduce.study.reporting import write_report
from vitreduce.train.config import load_config
from vitreduce.train.loop import train

REPO = Path(__file__).resolve().parents[1]
FAST = AnalysisConfig(batches=1, batch_size=8, iters=10, trace_samples=2, landscape_steps=3)


@pytest.fixture(scope="module")
def study(tiny_dataset, tmp_path_factory) -> Path:
    """A two-variant, one-seed study directory trained for 2 epochs on the tiny dataset."""
    root = tmp_path_factory.mktemp("study")
    for variant, reduction in (("baseline", "none"), ("grouped", "grouped")):
        config = load_config([REPO / "configs" / "demo" / "baseline.yaml", REPO / "configs" / "tiny.yaml"],
                             [f"data.root={tiny_dataset}", f"model.reduction={reduction}", "epochs=2"])
        train(config, root / "runs" / variant / "seed0")
    return root


def test_analysis_writes_once_and_reuses(study):
    run = study / "runs" / "grouped" / "seed0"
    written = {p.name for p in analyze_run(run, FAST, log=lambda _: None)}
    assert {"sharpness_final.json", "sharpness_peak.json", "surface_1d.csv", "interpolation.csv"} <= written
    result = json.loads((run / "analysis" / "sharpness_final.json").read_text())
    assert len(result["top_eigenvalues"]) == 1 and result["options"]["weights"] == "ema"
    assert analyze_run(run, FAST, log=lambda _: None) == []  # same options: reused
    changed = FAST.model_copy(update={"rho": 0.1, "landscape": False})
    assert {p.name for p in analyze_run(run, changed, log=lambda _: None)} == {"sharpness_final.json",
                                                                              "sharpness_peak.json"}
    assert not list((run / "analysis" / "landscape").glob("*.csv"))  # not left to mix with the new results
    final_only = FAST.model_copy(update={"checkpoints": ["final"]})
    analyze_run(run, final_only, log=lambda _: None)
    assert not (run / "analysis" / "sharpness_peak.json").exists()
    assert (run / "analysis" / "landscape" / "surface_1d.csv").is_file()
    assert not (run / "analysis" / "landscape" / "interpolation.csv").exists()


def test_report_has_the_sharpness_table_and_figures(study):
    analyze_run(study / "runs" / "baseline" / "seed0", FAST, log=lambda _: None)
    analyze_run(study / "runs" / "grouped" / "seed0", FAST, log=lambda _: None)
    paths = write_report(study)
    text = paths.markdown.read_text()
    assert "## Sharpness" in text
    rows = [line for line in text.splitlines() if re.match(r"\| (baseline|grouped) \| (final|peak) \| \d+ \|", line)]
    assert len(rows) == 4
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (study / image).is_file()
    assert "figures/interpolation.png" in text and "figures/landscape_1d.png" in text


def test_missing_checkpoint_is_named(study, tmp_path):
    with pytest.raises(VitreduceError, match="no peak raw checkpoint"):
        checkpoint_path(tmp_path, "peak", "raw")
