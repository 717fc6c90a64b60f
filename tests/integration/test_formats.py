"""Files written by vitreduce 0.1.0 (tests/fixtures/v0_1, see make_fixtures.py) still load, resume,
evaluate and report with today's code: the on-disk formats are a contract with users' runs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vitreduce
from vitreduce.cli.main import main
from vitreduce.data.synth import write_synth_dataset
from vitreduce.study.headline import headline
from vitreduce.study.report import architecture_table, results_table

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "v0_1"
pytestmark = pytest.mark.xdist_group("formats")


def test_a_saved_checkpoint_loads_with_its_sharing_and_outputs():
    model = vitreduce.load(FIXTURES / "model_grouped_shallow.safetensors").eval()
    expected = json.loads((FIXTURES / "model_grouped_shallow.expected.json").read_text())
    images = torch.tensor(expected["images"]).reshape(2, 3, 16, 16)  # (B, C, H, W)
    with torch.no_grad():
        logits = model(images)  # (B, 4)
    torch.testing.assert_close(logits.flatten(), torch.tensor(expected["logits"]), rtol=0, atol=1e-6)
    blocks = model.blocks
    assert blocks[0].mlp is blocks[1].mlp and blocks[2].mlp is blocks[3].mlp
    assert blocks[0].mlp.fc1.out_features == 32  # shallow:ratio=0.5 of 16 * 4
    assert vitreduce.describe(model).reduction == "grouped+shallow:ratio=0.5"


def test_an_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, monkeypatch):
    shutil.copytree(FIXTURES / "run_unfinished", tmp_path / "old", symlinks=True)
    # The run's data.root is relative, "data": its synth: section no longer generates into a folder not named
    # synth*, so the dataset it was trained on is made here as the user had it (the settings of that section).
    for where in ("old", "new"):
        write_synth_dataset(tmp_path / where / "data", classes=4, train_per_class=8, val_per_class=4, size=16)
    monkeypatch.chdir(tmp_path / "old")
    assert main(["train", "run/config.yaml", "--out", "run", "--resume"]) == 0
    assert len((tmp_path / "old" / "run" / "metrics.jsonl").read_text().splitlines()) == 3

    shutil.copy(tmp_path / "old" / "run" / "config.yaml", tmp_path / "new" / "config.yaml")
    monkeypatch.chdir(tmp_path / "new")
    assert main(["train", "config.yaml", "--out", "run"]) == 0
    for name in ("model.safetensors", "model_ema.safetensors"):
        resumed, fresh = load_file(tmp_path / "old" / "run" / name), load_file(tmp_path / "new" / "run" / name)
        assert resumed.keys() == fresh.keys()
        for key in fresh:
            assert torch.equal(resumed[key], fresh[key]), f"{name}: {key} differs"
    assert (tmp_path / "old" / "run" / "predictions.csv").read_text() == (
        tmp_path / "new" / "run" / "predictions.csv").read_text()


def test_a_finished_run_evaluates_to_its_recorded_metrics(tmp_path, capsys):
    run = FIXTURES / "study" / "out" / "runs" / "grouped" / "seed1"
    data = tmp_path / "data"
    assert main(["data", "synth", str(data), "--classes", "4", "--train-per-class", "8", "--val-per-class", "4",
                 "--size", "16"]) == 0
    capsys.readouterr()
    final = json.loads((run / "done.json").read_text())["final"]
    for flags, kind in (([], "raw"), (["--ema"], "ema")):
        assert main(["eval", str(run), "--data", str(data), "--workers", "0", "--device", "cpu", "--json",
                     *flags]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["top1"] == final[kind]["top1"]
        assert result["loss"] == pytest.approx(final[kind]["loss"], rel=1e-6)


def test_a_study_directory_reports_as_it_did(tmp_path, monkeypatch):
    study = tmp_path / "out"
    shutil.copytree(FIXTURES / "study" / "out", study, symlinks=True)
    for written in ("report.md", "report.html", "summary.json"):
        (study / written).unlink()
    shutil.rmtree(study / "figures")
    monkeypatch.chdir(tmp_path)  # the report names the study directory as given
    assert main(["report", "out"]) == 0
    old = FIXTURES / "study" / "out"
    # Since 0.1.0 the statistics changed (families, adjusted p, evidence levels, detectable effects), so the
    # report's text and each variant's `vs_baseline` differ by design; the per-variant metrics may not.
    new_summary = json.loads((study / "summary.json").read_text())
    old_summary = json.loads((old / "summary.json").read_text())
    assert list(new_summary) == list(old_summary)
    # Since then: the step spikes (steps.jsonl), which these runs predate: null, and the rest as it was.
    # the throughput spread (null: no throughput.json), the sharpness means per checkpoint and their paired tests.
    new_keys = {"vs_baseline", "step_spikes_mean", "step_spikes_std", "throughput", "sharpness",
                "sharpness_vs_baseline"}
    for variant, entry in old_summary.items():
        entry.pop("vs_baseline", None)
        assert new_summary[variant]["step_spikes_mean"] is None and new_summary[variant]["step_spikes_std"] is None
        assert {k: v for k, v in new_summary[variant].items() if k not in new_keys} == entry, variant
    vs = new_summary["grouped"]["vs_baseline"]
    assert vs["primary"] == "ema_top1_final" and vs["seed_level"][0]["family"]["size"] == 1
    md = (study / "report.md").read_text()
    old_md = (old / "report.md").read_text()
    for section in ("## Runs", "## Training stability"):
        assert old_md.split(section)[1].split("\n## ")[0] == md.split(section)[1].split("\n## ")[0], section
    # Numbers are now printed to the precision of their std, with throughput columns: the results and
    # architecture tables show the old summary's numbers in the new formats.
    for section, (_, rows) in (("## Results, EMA model", results_table(old_summary, "ema")),
                               ("## Architecture", architecture_table(old_summary))):
        text = md.split(section)[1].split("\n## ")[0]
        assert all("| " + " | ".join(row) + " |" in text for row in rows), section
    assert (study / "results.csv").is_file()
    assert md.index("## Headline") < md.index("## Runs") and md.rindex("\n## ") == md.index("\n## Appendix")
    assert headline(new_summary, "baseline")[0] in md.split("## Headline")[1].split("\n## ")[0]
    statistics = md.split("## Statistics against the baseline")[1].split("\n## ")[0]
    assert "Confirmatory family: the 1 comparison(s)" in statistics and "significant" not in statistics
    # New figures (paired difference, strip plots, drawdown) and an SVG beside each PNG: the old
    # figures are all still drawn.
    new_figures = {p.name for p in (study / "figures").iterdir()}
    assert {p.name for p in (old / "figures").iterdir()} <= new_figures
    assert all(name.replace(".png", ".svg") in new_figures for name in new_figures if name.endswith(".png"))
