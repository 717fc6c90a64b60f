"""A study's analysis section runs the segmentation probe on each finished run, and the report shows each
variant's mIoU beside its top-1 with the seed-level paired test against the baseline."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vitreduce.errors import VitreduceError
from vitreduce.study import load_spec, run_study

TINY = Path(__file__).resolve().parents[1] / "studies" / "tiny" / "dense_transfer.yaml"


def test_tiny_dense_transfer_study_probes_and_reports(tmp_path):
    spec = load_spec(TINY, ["overrides.epochs=1", f"overrides.data.root={tmp_path / 'synth'}",
                            f"analysis.segmentation.data={tmp_path / 'synth-seg'}", "analysis.segmentation.epochs=1"])
    run_study(spec, tmp_path / "study", echo=lambda *_: None)
    runs = sorted((tmp_path / "study" / "runs").glob("*/seed*"))
    assert len(runs) == 6
    for run in runs:
        result = json.loads((run / "analysis" / "segmentation" / "results.json").read_text())
        assert result["options"]["seed"] == int(run.name.removeprefix("seed"))  # seeded with the run's seed
        assert result["checkpoint"].endswith("model_ema.safetensors") and 0 <= result["miou"] <= 100
    summary = json.loads((tmp_path / "study" / "summary.json").read_text())["variants"]  # the file's contract
    for variant in ("grouped", "shallow"):
        entry = summary[variant]["segmentation"]
        assert entry["seeds"] == [42, 43] and entry["evidence"] == "confirmatory"  # the spec's primary: probe_miou
        first = summary[variant]["vs_baseline"]["seed_level"][0]
        assert (first["metric"], first["kind"], first["evidence"]) == ("miou", "ema", "confirmatory")
        test = entry["miou_vs_baseline"]
        assert test["n"] == 2 and test["family"]["size"] == 2  # grouped and shallow against the baseline
        base = summary["baseline"]["segmentation"]
        assert test["mean_diff"] == pytest.approx(entry["miou_mean"] - base["miou_mean"])
    report = (tmp_path / "study" / "report.md").read_text()
    section = report[report.index("## Dense transfer (segmentation probe)"):]
    assert "| baseline | 2 |" in section and "| grouped | 2 |" in section and "| shallow | 2 |" in section
    assert "mIoU difference vs baseline" in section and "The confirmatory family (primary metric probe_miou)" in section
    assert "in segmentation-probe mIoU of the EMA model" in report[:report.index("## Runs")]
    # Rerunning reuses every probe (same settings): nothing is trained or probed again.
    lines: list[str] = []
    run_study(spec, tmp_path / "study", echo=lines.append)
    assert sum("results reused" in line for line in lines) == 6, lines


def test_missing_probe_data_stops_the_study_before_any_run(tmp_path):
    spec = load_spec(TINY, [f"overrides.data.root={tmp_path / 'synth'}",
                            f"analysis.segmentation.data={tmp_path / 'ade'}"])
    with pytest.raises(VitreduceError, match="segmentation probe: analysis.segmentation.data .*ade is not a folder"):
        run_study(spec, tmp_path / "study", echo=lambda *_: None)
    assert not (tmp_path / "study").exists()
