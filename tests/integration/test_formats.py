"""Files written by vitreduce 0.1.0 (tests/fixtures/v0_1, see make_fixtures.py) still load, resume,
evaluate and report with today's code: the on-disk formats are a contract with users' runs."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vitreduce
from vitreduce.cli.main import main
from vitreduce.data.synth import write_synth_dataset
from vitreduce.report.headline import headline
from vitreduce.report.records import Spread
from vitreduce.report.summary_file import read_summary
from vitreduce.report.write import architecture_table, results_table

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "v0_1"
pytestmark = [pytest.mark.xdist_group("formats"), pytest.mark.stored_numbers]


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


# The fixture's first epoch was computed on another machine, whose CPU kernels may round differently: a run
# resumed from it and a run computed here from the start cannot be bitwise equal (docs/reproducibility.md).
# What holds everywhere: the resume itself is exact (two resumes of the fixture are bitwise equal), the run
# trains the same batches at the same positions (every integer of metrics.jsonl), and its weights are
# those of an uninterrupted run to within float rounding, measured against how far the weights moved after
# the fixture's last epoch: kernels that round differently put them about 1e-4 of that apart (1.3e-4 for
# torch's default CPU kernels against AVX-512 ones); a resume bug (a lost RNG state, a skipped or replayed
# batch) 0.2 to 0.4, which the tolerance catches (test_the_tolerance_catches_a_broken_resume).
RESUME_RTOL = 1e-2
INTEGERS = ("epoch", "step", "skipped_steps", "bad_images")
TIMINGS = ("img_s", "epoch_time_s")  # wall-clock: the only fields two identical runs may differ in


def _resume_fixture(where: Path, monkeypatch) -> Path:
    shutil.copytree(FIXTURES / "run_unfinished", where, symlinks=True)
    # The run's data.root is relative, "data": its synth: section no longer generates into a folder not named
    # synth*, so the dataset it was trained on is made here as the user had it (the settings of that section).
    write_synth_dataset(where / "data", classes=4, train_per_class=8, val_per_class=4, size=16)
    monkeypatch.chdir(where)
    assert main(["train", "run/config.yaml", "--out", "run", "--resume"]) == 0
    return where / "run"


def _uninterrupted(where: Path, monkeypatch) -> Path:
    write_synth_dataset(where / "data", classes=4, train_per_class=8, val_per_class=4, size=16)
    shutil.copy(FIXTURES / "run_unfinished" / "run" / "config.yaml", where / "config.yaml")
    monkeypatch.chdir(where)
    assert main(["train", "config.yaml", "--out", "run"]) == 0
    return where / "run"


def _model_files(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {name: load_file(run / name) for name in ("model.safetensors", "model_ema.safetensors")}


def _relative_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||b - w1|| over all tensors of a model file, in float64, where w1 are the fixture's weights
    after its first epoch: the distance as a fraction of what the rest of the run changed."""
    start = load_file(FIXTURES / "run_unfinished" / "run" / "checkpoints" / "last-00000004" / "model.safetensors")
    assert a.keys() == b.keys() == start.keys()
    diff = sum(float((a[k].double() - b[k].double()).square().sum()) for k in b)
    moved = sum(float((b[k].double() - start[k].double()).square().sum()) for k in b)
    return (diff / moved) ** 0.5


def _metrics(run: Path, keys=None) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if (k in keys if keys else k not in TIMINGS)} for line in lines]


def test_an_interrupted_run_resumes_exactly_and_to_the_weights_of_an_uninterrupted_one(tmp_path, monkeypatch):
    first, second = _resume_fixture(tmp_path / "a", monkeypatch), _resume_fixture(tmp_path / "b", monkeypatch)
    for name, files in _model_files(first).items():  # the resume is exact: same start, same bits
        again = _model_files(second)[name]
        assert all(torch.equal(files[k], again[k]) for k in files), name
    assert (first / "predictions.csv").read_bytes() == (second / "predictions.csv").read_bytes()
    assert _metrics(first) == _metrics(second)

    fresh = _uninterrupted(tmp_path / "c", monkeypatch)
    assert _metrics(first, INTEGERS) == _metrics(fresh, INTEGERS) and len(_metrics(fresh)) == 3  # same steps
    resumed = _model_files(first)
    for name, files in _model_files(fresh).items():
        assert _relative_distance(resumed[name], files) < RESUME_RTOL, name


def _lose_rng_state(monkeypatch):
    monkeypatch.setattr("vitreduce.train.state.restore_rng", lambda rng: None)


def _skip_a_batch(monkeypatch):
    from vitreduce.train.state import Position

    original = Position.from_dict.__func__
    monkeypatch.setattr(Position, "from_dict", classmethod(
        lambda cls, saved: dataclasses.replace(original(cls, saved), batch=saved["batch"] + 1)))


def _replay_a_batch(monkeypatch):
    from vitreduce.train.state import Position

    original = Position.from_dict.__func__
    monkeypatch.setattr(Position, "from_dict", classmethod(
        lambda cls, saved: dataclasses.replace(original(cls, saved), batch=saved["batch"] - 1)))


@pytest.mark.parametrize("bug", [_lose_rng_state, _skip_a_batch, _replay_a_batch])
def test_the_tolerance_catches_a_broken_resume(bug, tmp_path, monkeypatch):
    fresh = _model_files(_uninterrupted(tmp_path / "fresh", monkeypatch))
    with monkeypatch.context() as patched:
        bug(patched)
        broken = _model_files(_resume_fixture(tmp_path / "broken", monkeypatch))
    assert _relative_distance(broken["model.safetensors"], fresh["model.safetensors"]) > 10 * RESUME_RTOL


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
    new_summary = read_summary(study / "summary.json").variants  # format 2: variants apart from the study
    # format 1: variants at the top, read into the same records (0.1.0's GMACs, rounded to 4 decimals, read as
    # the exact MAC counts they round to)
    old_summary = read_summary(old / "summary.json").variants
    assert json.loads((study / "summary.json").read_text())["format"] == 2
    assert list(new_summary) == list(old_summary)
    # Since then: the step spikes (steps.jsonl), which these runs predate: null, and the rest as it was.
    # the throughput spread (null: no throughput.json), the sharpness means per checkpoint and their paired tests.
    # Every run counted: each variant's run outcomes, and the EMA horizon's inputs.
    new_keys = ("vs_baseline", "step_spikes", "throughput", "sharpness", "sharpness_vs_baseline", "outcomes",
                "steps_trained", "ema_decay")
    for variant, entry in old_summary.items():
        assert new_summary[variant].step_spikes == Spread(None, None)
        assert dataclasses.replace(new_summary[variant], **{k: getattr(entry, k) for k in new_keys}) == entry, variant
    vs = new_summary["grouped"].vs_baseline
    assert vs.primary == "ema_top1_final" and vs.seed_level[0].family.size == 1
    md = (study / "report.md").read_text()
    old_md = (old / "report.md").read_text()
    # The Runs section now gives every run's outcome, and Training stability opens with divergence; the loss
    # spike table is as it was.
    runs = md.split("## Runs")[1].split("\n## ")[0]
    assert "| baseline (baseline) | 2 | 2 | 0 | 0 | 0 | 2 | (baseline) | 0, 1 |" in runs
    assert "| grouped | 2 | 2 | 0 | 0 | 0 | 2 | 2 | 0, 1 |" in runs
    assert all(new_summary[v].outcomes.finished == 2 for v in new_summary)
    spikes = old_md.split("## Training stability")[1].split("\n## ")[0].split("\n\n", 1)[1]
    assert spikes in md.split("## Training stability")[1].split("\n## ")[0]
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
