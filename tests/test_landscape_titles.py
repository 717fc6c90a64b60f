"""`vitreduce landscape` figures say what they show: titles from the run directory or the checkpoint header,
the 1D surface as L(alpha) - L(0) over --directions random directions, tick labels that do not overlap."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

import vitreduce
from vitreduce.cli.landscape_cmd import describe_model_file
from vitreduce.cli.main import main
from vitreduce.sharpness import landscape, landscape_plots

TINY = dict(img_size=8, patch_size=4, embed_dim=8, num_heads=2, num_classes=3, depth=2)


def _model(seed: int):
    torch.manual_seed(seed)
    return vitreduce.create_model("vit_tiny_patch16_224", reduction="grouped", **TINY)


@pytest.fixture
def figures(monkeypatch):
    """{file name: Figure} of every landscape plot written, drawn so that tick labels have their places."""
    saved = {}
    original = landscape_plots._save

    def record(figure, path):
        figure.canvas.draw()
        saved[path.name] = figure
        return original(figure, path)

    monkeypatch.setattr(landscape_plots, "_save", record)
    return saved


def _tick_labels_apart(axis) -> bool:
    boxes = [t.get_window_extent() for t in axis.get_xticklabels() if t.get_visible() and t.get_text()]
    return len(boxes) >= 3 and not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:], strict=False))


def test_titles_name_the_run_checkpoint_and_weights(tmp_path):
    run = tmp_path / "runs" / "grouped" / "seed0"
    (run / "checkpoints" / "best").mkdir(parents=True)
    (run / "config.yaml").write_text("{}\n")
    meta = {"epoch": "3", "weights": "ema"}
    final = vitreduce.save(_model(0), run / "model_ema.safetensors", metadata=meta)
    peak = vitreduce.save(_model(0), run / "checkpoints" / "best" / "model_ema.safetensors", metadata=meta)
    loose = vitreduce.save(_model(0), tmp_path / "model.safetensors")
    assert describe_model_file(final) == "grouped/seed0 final (epoch 3, EMA weights)"
    assert describe_model_file(peak) == "grouped/seed0 peak (epoch 3, EMA weights)"
    assert describe_model_file(loose) == "model.safetensors (vit_tiny_patch16_224, reduction grouped)"


def test_write_landscape_draws_the_loss_change_per_direction(tmp_path, figures):
    lines = [landscape.Curve([-1.0, -0.5, 0.0, 0.5, 1.0], [2.0 + d, 1.5 + d, 1.0 + d, 1.6 + d, 2.2 + d], [0.0] * 5)
             for d in range(3)]
    landscape.write_landscape(tmp_path, line=lines, title="grouped/seed0 final")
    with open(tmp_path / "surface_1d.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["direction"]) for r in rows] == [d for d in range(3) for _ in range(5)]
    ax = figures["surface_1d.png"].axes[0]
    assert ax.get_title().startswith("grouped/seed0 final\n") and "3 random direction(s)" in ax.get_title()
    assert ax.get_ylabel() == "L(alpha) - L(0) (cross-entropy)"
    for line in ax.get_lines()[:3]:  # a direction's own offset (its L(0)) is removed
        assert np.allclose(line.get_ydata(), [1.0, 0.5, 0.0, 0.6, 1.2])
    assert _tick_labels_apart(ax)


def _image_folder(root):
    rng = np.random.default_rng(0)
    for label in range(3):
        folder = root / "train" / f"class{label}"
        folder.mkdir(parents=True)
        for index in range(4):
            Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return root


def test_cli_titles_its_plots_from_the_files_and_refuses_no_direction(tmp_path, figures, capsys):
    data = _image_folder(tmp_path / "data")
    first = vitreduce.save(_model(0), tmp_path / "peak.safetensors", metadata={"epoch": "2"})
    second = vitreduce.save(_model(1), tmp_path / "final.safetensors", metadata={"epoch": "5"})
    base = [str(first), "--data", str(data), "--steps", "5", "--batches", "1", "--batch-size", "4", "--quiet"]
    assert main(["landscape", *base, "--directions", "0"]) == 2
    assert "--directions must be >= 1" in capsys.readouterr().err
    assert main(["landscape", *base, "--other", str(second), "--directions", "2", "--no-2d"]) == 0
    with open(tmp_path / "peak_landscape" / "surface_1d.csv", newline="") as handle:
        assert len(list(csv.reader(handle))) == 1 + 2 * 5
    title = figures["interpolation.png"].axes[0].get_title()
    assert "alpha 0 = peak.safetensors (vit_tiny_patch16_224, reduction grouped, epoch 2)" in title
    assert "alpha 1 = final.safetensors (vit_tiny_patch16_224, reduction grouped, epoch 5)" in title
    assert figures["surface_1d.png"].axes[0].get_title().startswith("peak.safetensors (vit_tiny_patch16_224")
    for figure in figures.values():
        assert _tick_labels_apart(figure.axes[0])
