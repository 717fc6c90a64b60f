"""Loss landscapes: filter-normalised directions, bitwise restored weights, interpolation endpoints, files, CLI."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

import vitreduce
from vitreduce.cli.main import main
from vitreduce.errors import VitreduceError
from vitreduce.reduction.params import unique_named_parameters
from vitreduce.sharpness import landscape

LANDSCAPE_VIT = dict(img_size=8, patch_size=4, embed_dim=8, num_heads=2, num_classes=3)


def tiny_vit(reduction="grouped", depth=2, seed=0, **overrides):
    torch.manual_seed(seed)
    kwargs = {**LANDSCAPE_VIT, **overrides}
    return vitreduce.create_model("vit_tiny_patch16_224", reduction=reduction, depth=depth, **kwargs)


def random_batches(count=2, size=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 8, 8, generator=generator), torch.randint(0, 3, (size,), generator=generator))
            for _ in range(count)]


def snapshot(model):
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def assert_bitwise_equal(model, saved):
    state = model.state_dict()
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[name], saved[name]) for name in saved)


def test_direction_rows_have_the_weight_row_norms():
    model = tiny_vit()
    direction = landscape.random_direction(model, seed=0)
    named = unique_named_parameters(model)
    assert list(direction) == [name for name, _ in named]  # the shared MLP gets one direction
    for name, weight in named:
        d = direction[name]
        assert d.shape == weight.shape and d.dtype == weight.dtype
        if weight.dim() <= 1:
            assert torch.equal(d, torch.zeros_like(d)), name  # biases and norm parameters stay still
        else:
            rows = weight.detach().reshape(weight.shape[0], -1).norm(dim=1)
            torch.testing.assert_close(d.reshape(d.shape[0], -1).norm(dim=1), rows, rtol=1e-5, atol=1e-7)


def test_including_bias_and_norm_gives_them_plus_minus_abs_w():
    model = tiny_vit()
    plain = landscape.random_direction(model, seed=3)
    direction = landscape.random_direction(model, seed=3, include_bias_norm=True)
    for name, weight in unique_named_parameters(model):
        if weight.dim() == 1:  # each entry is a filter of one element
            torch.testing.assert_close(direction[name].abs(), weight.detach().abs(), rtol=1e-5, atol=1e-7)
        else:  # the other tensors' directions do not depend on the option
            assert torch.equal(direction[name], plain[name])


def test_directions_are_seeded():
    model = tiny_vit()
    first, again, other = (landscape.random_direction(model, seed) for seed in (1, 1, 2))
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not torch.equal(first["blocks.0.mlp.fc1.weight"], other["blocks.0.mlp.fc1.weight"])


def test_surfaces_restore_the_weights_bitwise_and_pass_through_the_checkpoint():
    model = tiny_vit()
    batches = random_batches()
    saved = snapshot(model)
    base_loss, base_acc = landscape.loss_and_accuracy(model, batches)
    d1 = landscape.random_direction(model, seed=0)
    d2 = landscape.random_direction(model, seed=1)
    line = landscape.surface_1d(model, batches, d1, steps=5, span=0.5)
    assert_bitwise_equal(model, saved)
    surface = landscape.surface_2d(model, batches, d1, d2, steps=3, span=0.5)
    assert_bitwise_equal(model, saved)
    assert line.alphas == [-0.5, -0.25, 0.0, 0.25, 0.5]
    assert line.losses[2] == base_loss and line.accuracies[2] == base_acc  # alpha 0 is the checkpoint
    assert len(surface.losses) == 3 and all(len(row) == 3 for row in surface.losses)
    assert surface.losses[1][1] == base_loss
    assert len(set(line.losses)) == 5  # the direction really moves the weights
    # (alpha, 0) on the 2D grid is the 1D surface at alpha.
    assert surface.losses[0][1] == pytest.approx(line.losses[0], rel=1e-5)


def test_weights_are_restored_even_when_an_evaluation_fails():
    model = tiny_vit()
    saved = snapshot(model)
    bad = [(torch.randn(2, 3, 9, 9), torch.tensor([0, 1]))]  # wrong image size: the forward raises
    with pytest.raises((RuntimeError, AssertionError)):
        landscape.surface_1d(model, bad, landscape.random_direction(model, 0), steps=3)
    assert_bitwise_equal(model, saved)


def test_interpolation_endpoints_are_the_two_checkpoints():
    first, second = tiny_vit(seed=0), tiny_vit(seed=1)
    batches = random_batches()
    saved_first, saved_second = snapshot(first), snapshot(second)
    curve = landscape.interpolate(first, second, batches)
    assert_bitwise_equal(first, saved_first)
    assert_bitwise_equal(second, saved_second)
    assert curve.alphas[0] == -0.25 and curve.alphas[-1] == 1.25
    losses = dict(zip(curve.alphas, curve.losses, strict=True))
    assert losses[0.0] == landscape.loss_and_accuracy(first, batches)[0]
    assert losses[1.0] == landscape.loss_and_accuracy(second, batches)[0]


def test_interpolation_refuses_different_architectures():
    batches = random_batches()
    with pytest.raises(VitreduceError, match="same architecture"):
        landscape.interpolate(tiny_vit("grouped"), tiny_vit("none"), batches)
    with pytest.raises(VitreduceError, match="same architecture"):
        landscape.interpolate(tiny_vit("none"), tiny_vit("shallow"), batches)


def test_a_direction_of_another_model_is_refused():
    with pytest.raises(VitreduceError, match="direction does not match"):
        landscape.surface_1d(tiny_vit("none"), random_batches(), landscape.random_direction(tiny_vit("grouped"), 0))


def test_grid_wants_an_odd_number_of_steps():
    assert landscape.grid(3, 1.0) == [-1.0, 0.0, 1.0]
    with pytest.raises(VitreduceError, match="odd"):
        landscape.grid(4, 1.0)


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_write_landscape_files(tmp_path):
    line = landscape.Curve([-1.0, 0.0, 1.0], [2.0, 1.0, 2.5], [10.0, 50.0, 5.0])
    surface = landscape.Surface([-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0], [[3, 2, 3], [2, 1, 2], [3, 2, 4]],
                                [[0, 0, 0], [0, 50, 0], [0, 0, 0]])
    interpolation = landscape.Curve([-0.25, 0.0, 0.5, 1.0, 1.25], [1.2, 1.0, 1.4, 0.9, 1.0], [0.0] * 5)
    written = landscape.write_landscape(tmp_path / "out", line=line, surface=surface, interpolation=interpolation,
                                        title="a", other_title="b")
    names = sorted(path.name for path in written)
    assert names == ["interpolation.csv", "interpolation.png", "surface_1d.csv", "surface_1d.png",
                     "surface_2d.csv", "surface_2d.png"]
    assert all(path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for path in written if path.suffix == ".png")
    rows = read_csv(tmp_path / "out" / "surface_1d.csv")
    assert rows[0] == ["alpha", "loss", "acc", "direction"] and [float(v) for v in rows[2]] == [0.0, 1.0, 50.0, 0.0]
    rows = read_csv(tmp_path / "out" / "surface_2d.csv")
    assert rows[0] == ["alpha", "beta", "loss", "acc"] and len(rows) == 10
    assert [float(v) for v in rows[9]] == [1.0, 1.0, 4.0, 0.0]  # alpha-major order
    assert len(read_csv(tmp_path / "out" / "interpolation.csv")) == 6


def write_image_folder(root, classes=3, per_class=4, size=10):
    rng = np.random.default_rng(0)
    for label in range(classes):
        folder = root / "train" / f"class{label}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return root


def test_cli_writes_surfaces_and_interpolation(tmp_path, capsys):
    data = write_image_folder(tmp_path / "data")
    first = vitreduce.save(tiny_vit(seed=0), tmp_path / "peak.safetensors")
    second = vitreduce.save(tiny_vit(seed=1), tmp_path / "final.safetensors")
    args = ["landscape", str(first), "--data", str(data), "--other", str(second), "--steps", "3",
            "--batches", "1", "--batch-size", "4", "--quiet"]
    assert main(args) == 0
    out = tmp_path / "peak_landscape"  # default: beside the checkpoint
    text = capsys.readouterr().out
    assert str(out) in text and "surface_2d.png" in text
    assert {p.name for p in out.iterdir()} == {"surface_1d.csv", "surface_1d.png", "surface_2d.csv",
                                               "surface_2d.png", "interpolation.csv", "interpolation.png"}
    assert len(read_csv(out / "surface_2d.csv")) == 1 + 9


def test_cli_bad_input_exits_2(tmp_path, capsys):
    data = write_image_folder(tmp_path / "data")
    grouped = vitreduce.save(tiny_vit("grouped"), tmp_path / "grouped.safetensors")
    plain = vitreduce.save(tiny_vit("none"), tmp_path / "plain.safetensors")
    base = ["--data", str(data), "--batches", "1", "--batch-size", "4", "--quiet"]
    cases = [
        (["landscape", str(grouped), *base, "--steps", "4"], "odd"),
        (["landscape", str(grouped), *base, "--other", str(plain)], "same architecture"),
        (["landscape", str(tmp_path / "missing.safetensors"), *base], "does not exist"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
