"""Sharpness and landscape of a study's runs: files written once, reused, and reported per variant."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

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


# ---------------------------------------------------------------------------------------------------
# The class folders a run's analysis reads are the classes its model was trained on (data.recorded)


def renamed_copy(data: Path, into: Path) -> Path:
    """A copy of ``data`` whose first training class folder is renamed, so that it sorts last: every label
    after it would shift by one, with the same number of folders."""
    shutil.copytree(data, into)
    first = sorted(p for p in (into / "train").iterdir() if p.is_dir())[0]
    first.rename(first.with_name("zz-" + first.name))
    return into


def test_the_analysis_of_a_run_whose_class_folders_were_renamed_is_refused(study, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(study / "runs" / "grouped" / "seed0", run, ignore=shutil.ignore_patterns("analysis"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["root"] = str(renamed_copy(Path(config["data"]["root"]), tmp_path / "data"))
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(VitreduceError, match="does not hold the classes .* was trained on .*folders the model does not "
                                             "know: 'zz-"):
        analyze_run(run, FAST.model_copy(update={"landscape": False}), log=lambda _: None)
    assert not (run / "analysis" / "sharpness_final.json").exists()
    with pytest.raises(VitreduceError, match="does not hold the classes"):  # the landscape reads the same batches
        analyze_run(run, FAST.model_copy(update={"checkpoints": ["final"]}), log=lambda _: None)


def test_a_study_reports_the_run_whose_analysis_is_refused_and_measures_the_others(tmp_path):
    from vitreduce.study.runner import run_study
    from vitreduce.study.spec import parse_spec

    base = {"epochs": 1, "device": "cpu",
            "model": {"name": "vit_tiny_patch16_224", "num_classes": 3, "img_size": 16, "patch_size": 8,
                      "embed_dim": 16, "depth": 2, "num_heads": 2},
            "data": {"root": str(tmp_path / "synth-a"), "batch_size": 8, "workers": 0},
            "augment": {"auto_augment": None, "mixup": 0.0, "cutmix": 0.0, "reprob": 0.0, "repeated_aug": 1},
            "logging": {"progress": "none"},
            "synth": {"classes": 3, "train_per_class": 8, "val_per_class": 4, "size": 16}}
    tree = {"name": "classes", "base": base, "seeds": [0],
            "variants": [{"name": "a"}, {"name": "b", "overrides": {"data.root": str(tmp_path / "synth-b")}}]}
    out, lines = tmp_path / "study", []
    assert run_study(parse_spec(tree), out, echo=lines.append).exit_status == 0
    train_b = tmp_path / "synth-b" / "train"  # renamed after training, in place
    first = sorted(p for p in train_b.iterdir() if p.is_dir())[0]
    first.rename(first.with_name(first.name.upper()))  # a case change: the model's name for it is gone
    analysis = {"batches": 1, "batch_size": 8, "iters": 5, "trace_samples": 2, "landscape": False,
                "checkpoints": ["final"]}
    result = run_study(parse_spec({**tree, "analysis": analysis}), out, echo=lines.append)
    assert result.exit_status == 1 and list(result.analysis_failed) == ["b/seed0"]
    assert "does not hold the classes" in result.analysis_failed["b/seed0"]
    assert any(line.startswith("analysis [2/2] b/seed0: failed: ") for line in lines)
    assert (out / "runs" / "a" / "seed0" / "analysis" / "sharpness_final.json").is_file()
    assert not (out / "runs" / "b" / "seed0" / "analysis" / "sharpness_final.json").exists()
    assert result.report is not None  # the report is still written
