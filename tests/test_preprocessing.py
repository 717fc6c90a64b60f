"""Analyses see a run's images as its evaluation did: `vitreduce eval`, `vitreduce sharpness`, `vitreduce
landscape` and a study's analysis read them through one data path (the eval transform of the run's
augment settings, the same class order, the same image reader), so they see the same tensors."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import timm.data
import torch
import yaml

import vitreduce
from vitreduce.cli.main import main
from vitreduce.data.config import AugmentConfig
from vitreduce.data.images import ImageFolderSamples
from vitreduce.data.transforms import DEFAULTS, HEADER, eval_preprocessing_for, run_config_for
from vitreduce.errors import VitreduceError
from vitreduce.sharpness import batches as batches_module
from vitreduce.sharpness.batches import load_batches, subset_indices
from vitreduce.study.analysis import AnalysisConfig, analyze_run
from vitreduce.train import evaluate as evaluate_module
from vitreduce.train.config import validate
from vitreduce.train.loop import train

# Every eval-transform setting away from the recipe's default (bicubic, crop 0.9, mean = std = 0.5).
NON_DEFAULT = {"interpolation": "bilinear", "crop_pct": 0.75, "mean": [0.4, 0.45, 0.5], "std": [0.2, 0.25, 0.3]}
SUBSET = dict(batches=2, batch_size=8, seed=0)  # 16 of the 32 training images
FIXTURE_RUN = Path(__file__).resolve().parent / "fixtures" / "v0_1" / "study" / "out" / "runs" / "grouped" / "seed0"


@pytest.fixture(scope="module")
def run(tiny_train_config, tmp_path_factory) -> Path:
    """A one-epoch run trained and evaluated with NON_DEFAULT eval preprocessing."""
    out = tmp_path_factory.mktemp("preprocessing") / "run"
    train(validate(tiny_train_config(epochs=1, augment=NON_DEFAULT)), out)
    return out


@pytest.fixture
def analysed(monkeypatch) -> list:
    """Every batch list ``load_batches`` hands to an analysis (the CLIs and the study import it when called)."""
    seen, real = [], batches_module.load_batches

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(batches_module, "load_batches", spy)
    return seen


def eval_tensors(run: Path, data: Path, monkeypatch, capsys) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The images and labels `vitreduce eval --split train` scores, by position in the split, and its JSON."""
    seen, real = [], evaluate_module.evaluate

    def spy(model, loader, *args, **kwargs):
        seen.extend(loader)
        return real(model, seen, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "evaluate", spy)
    assert main(["eval", str(run), "--ema", "--data", str(data), "--split", "train", "--workers", "0",
                 "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    images = torch.cat([images for images, _, _ in seen])  # (N, C, H, W)
    labels = torch.cat([labels for _, labels, _ in seen])
    positions = torch.cat([positions for _, _, positions in seen])
    assert torch.equal(positions, torch.arange(len(positions)))  # ImageFolder order, every image once
    return images, labels, result


def assert_eval_tensors(batches: list, images: torch.Tensor, labels: torch.Tensor) -> None:
    chosen = subset_indices(len(images), **SUBSET).split(SUBSET["batch_size"])
    assert len(batches) == len(chosen)
    for (batch_images, batch_labels), positions in zip(batches, chosen, strict=True):
        assert torch.equal(batch_images, images[positions])
        assert torch.equal(batch_labels, labels[positions])


def test_analyses_see_exactly_the_tensors_eval_sees(run, tiny_dataset, analysed, monkeypatch, capsys):
    images, labels, evaluated = eval_tensors(run, tiny_dataset, monkeypatch, capsys)
    assert evaluated["preprocessing"] == {"source": HEADER, **NON_DEFAULT}  # the model file records it
    subset = ["--data", str(tiny_dataset), "--batches", "2", "--batch-size", "8", "--seed", "0", "--device", "cpu"]
    # Not --quiet, which prints the result only: the preprocessing line is checked below.
    assert main(["sharpness", str(run / "model_ema.safetensors"), *subset, "--iters", "2", "--trace-samples", "0",
                 "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["preprocessing"] == {"source": HEADER, **NON_DEFAULT}
    assert "preprocessing: bilinear resize, centre crop 0.75" in captured.err
    best = run / "checkpoints" / "best" / "model_ema.safetensors"  # a run's model file below checkpoints/
    assert main(["landscape", str(best), *subset, "--quiet", "--steps", "3", "--no-2d",
                 "--out", str(run.parent / "cli")]) == 0
    assert f"from {HEADER}" in capsys.readouterr().out
    config = AnalysisConfig(**SUBSET, iters=2, trace_samples=0, landscape_steps=3)
    analyze_run(run, config, log=lambda _: None)
    assert len(analysed) == 3  # sharpness, landscape, the study's analysis (its landscape reuses its batches)
    for batches in analysed:
        assert_eval_tensors(batches, images, labels)
    recorded = {"source": "config.yaml", **NON_DEFAULT}
    for name in ("sharpness_final.json", "sharpness_peak.json", "landscape/options.json"):
        assert json.loads((run / "analysis" / name).read_text())["options"]["preprocessing"] == recorded
    # Not a vacuous check: the recipe's defaults (and timm's, crop 0.9) give other tensors.
    model = vitreduce.load(run / "model_ema.safetensors")
    defaults = load_batches(model, tiny_dataset, **SUBSET)
    assert not torch.equal(defaults[0][0], analysed[0][0][0])


def test_the_run_config_is_found_from_every_model_file_of_a_run(run, tmp_path):
    config = run.absolute() / "config.yaml"
    files = [run / "model.safetensors", run / "model_ema.safetensors",
             *(run / "checkpoints").glob("*/model*.safetensors")]
    assert {path.parent.name for path in files} >= {"best", "last"}
    for path in files:
        assert run_config_for(path) == config, path
        augment, source = eval_preprocessing_for(path)
        assert source == str(config) and augment.crop_pct == 0.75 and list(augment.mean) == NON_DEFAULT["mean"]
    alone = shutil.copy(run / "model.safetensors", tmp_path / "model.safetensors")
    assert eval_preprocessing_for(alone) == (AugmentConfig(), DEFAULTS)  # as `vitreduce eval` does


def test_a_run_config_with_an_unreadable_augment_section_is_refused(run, tmp_path):
    copy = tmp_path / "run"
    copy.mkdir()
    shutil.copy(run / "model.safetensors", copy / "model.safetensors")
    tree = yaml.safe_load((run / "config.yaml").read_text())
    for augment, message in (({**tree["augment"], "crop_pct": 2.0}, "augment.crop_pct must be in"),
                             ([1, 2], "a mapping, found list")):
        (copy / "config.yaml").write_text(yaml.safe_dump({**tree, "augment": augment}))
        with pytest.raises(VitreduceError, match=f"config.yaml .*{message}.*repair it"):
            eval_preprocessing_for(copy / "model.safetensors")


@pytest.mark.stored_numbers
def test_a_run_trained_with_default_preprocessing_is_analysed_as_before(tmp_path, monkeypatch, capsys):
    """The format fixture's analysis was made with timm's default data config of vit_tiny_patch16_224, which
    equals the recipe's defaults its run trained with (bicubic, crop 0.9, mean = std = 0.5): the same inputs,
    so the same numbers (the loss and SAM bit for bit here; the Hessian estimates to rounding)."""
    run = shutil.copytree(FIXTURE_RUN, tmp_path / "run", symlinks=True)
    monkeypatch.chdir(tmp_path)  # the run's data.root is "data", relative
    assert main(["data", "synth", "data", "--classes", "4", "--train-per-class", "8", "--val-per-class", "4",
                 "--size", "16"]) == 0
    capsys.readouterr()
    # The inputs themselves: the batches drawn through the run's preprocessing are those timm's default data
    # config of the model gave the analysis before it used the run's settings.
    model = vitreduce.load(run / "model_ema.safetensors")
    ours = load_batches(model, "data", augment=eval_preprocessing_for(run / "model_ema.safetensors").augment,
                        batches=1, batch_size=8)
    timm_config = timm.data.resolve_data_config({"input_size": (3, 16, 16)}, model=model)
    before = ImageFolderSamples(Path("data/train"), timm.data.create_transform(**timm_config, is_training=False))
    chosen = subset_indices(len(before), batches=1, batch_size=8, seed=0)
    assert torch.equal(ours[0][0], torch.stack([before[(int(index), 0)][0] for index in chosen]))
    old = json.loads((run / "analysis" / "sharpness_final.json").read_text())
    old_line = (run / "analysis" / "landscape" / "surface_1d.csv").read_text()
    config = AnalysisConfig(checkpoints=["final"], batches=1, batch_size=8, iters=5, trace_samples=2,
                            landscape_steps=3, landscape_directions=1)  # the fixture's one direction
    written = {path.name for path in analyze_run(run, config, log=lambda _: None)}
    assert {"sharpness_final.json", "options.json"} <= written  # measured again: the preprocessing is now recorded
    new = json.loads((run / "analysis" / "sharpness_final.json").read_text())
    assert new["options"]["preprocessing"] == {"source": "config.yaml", "interpolation": "bicubic", "crop_pct": 0.9,
                                               "mean": [0.5] * 3, "std": [0.5] * 3}
    for key in ("loss", "trace", "sam_sharpness"):
        assert new[key] == pytest.approx(old[key], rel=1e-5), key
    assert new["top_eigenvalues"] == pytest.approx(old["top_eigenvalues"], rel=1e-5)
    losses = [[float(row["loss"]) for row in csv.DictReader(text.splitlines())]
              for text in (old_line, (run / "analysis" / "landscape" / "surface_1d.csv").read_text())]
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
