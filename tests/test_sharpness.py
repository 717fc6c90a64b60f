"""Sharpness analysis of tiny ViTs against their dense Hessians, the fixed batch set, and the CLI."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import vitreduce
from vitreduce.cli.main import main
from vitreduce.errors import VitreduceError
from vitreduce.reduction.params import unique_named_parameters, unique_parameters
from vitreduce.sharpness.batches import load_batches
from vitreduce.sharpness.hessian import top_eigenvalues
from vitreduce.sharpness.measures import analysis_mode, analyze_sharpness, batch_losses

# Small enough for a dense Hessian (about 1k unique parameters), big enough to have every ViT part.
HESSIAN_VIT = dict(img_size=8, patch_size=4, in_chans=1, embed_dim=8, num_heads=2, mlp_ratio=2.0, num_classes=3)


def tiny_vit(reduction="none", depth=1, seed=0, **overrides):
    torch.manual_seed(seed)
    kwargs = {**HESSIAN_VIT, **overrides}
    return vitreduce.create_model("vit_tiny_patch16_224", reduction=reduction, depth=depth, **kwargs)


def random_batches(count=2, size=4, channels=1, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, channels, 8, 8, generator=generator, dtype=dtype),
             torch.randint(0, 3, (size,), generator=generator)) for _ in range(count)]


def dense_hessian(model, batches):
    """The Hessian of the mean loss w.r.t. the flattened unique parameters, by torch.autograd.functional.

    A shared MLP is one module object, so substituting its first name substitutes every use. Not
    tie_weights=True (the default): in torch 2.14 it leaves a shared submodule's parameters replaced
    after the call (pytorch#164759).
    """
    named = unique_named_parameters(model)
    shapes = [p.shape for _, p in named]
    flat = torch.cat([p.detach().reshape(-1) for _, p in named])

    def loss(vector):
        pieces = vector.split([s.numel() for s in shapes])
        params = {name: piece.view(shape) for (name, _), piece, shape in zip(named, pieces, shapes, strict=True)}
        losses = [F.cross_entropy(torch.func.functional_call(model, params, (images,), tie_weights=False), targets)
                  for images, targets in batches]
        return torch.stack(losses).mean()

    with analysis_mode(model):
        return torch.autograd.functional.hessian(loss, flat)


@pytest.mark.parametrize("reduction, depth", [("none", 1), ("grouped", 2)])
def test_top_eigenvalues_and_trace_match_the_dense_hessian(reduction, depth):
    model = tiny_vit(reduction, depth).double()
    batches = random_batches()
    hessian = dense_hessian(model, batches)
    unique_count = sum(p.numel() for p in unique_parameters(model))
    assert hessian.shape == (unique_count, unique_count)
    if reduction == "grouped":  # the shared MLP is one set of variables, not two
        assert unique_count < sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    eigenvalues = torch.linalg.eigvalsh(hessian).flip(0)  # descending

    # At this random point the 2nd eigenvalue has a negative twin of almost the same magnitude, which
    # stalls the power method after the first; Lanczos resolves it (tests/test_hessian.py shows why).
    power = analyze_sharpness(model, batches, top_k=1, max_iters=300, tol=1e-7, trace_samples=40, seed=0)
    lanczos = analyze_sharpness(model, batches, top_k=3, max_iters=300, tol=1e-7, trace_samples=0,
                                method="lanczos")
    assert power.converged and lanczos.converged and power.parameters == unique_count
    assert power.top_eigenvalues[0] == pytest.approx(float(eigenvalues[0]), rel=0.01)
    torch.testing.assert_close(torch.tensor(lanczos.top_eigenvalues, dtype=torch.float64), eigenvalues[:3],
                               rtol=0.01, atol=0)
    assert abs(power.trace - float(torch.trace(hessian))) <= 4 * power.trace_stderr
    assert power.fused_attention_disabled == depth  # timm builds them fused; the analysis switched them off


def test_tied_and_untied_mlps_are_different_variables():
    # Untying the shared MLP keeps the function but doubles its variables: a different Hessian. The
    # analysis of the tied model must see the tied one (it matches the dense Hessian above).
    tied = tiny_vit("grouped", depth=2).double()
    untied = copy.deepcopy(tied)
    untied.blocks[1].mlp = copy.deepcopy(untied.blocks[0].mlp)
    batches = random_batches()
    with analysis_mode(tied), analysis_mode(untied):
        with torch.no_grad():
            assert batch_losses(tied, batches)[0]().item() == batch_losses(untied, batches)[0]().item()
        values = [top_eigenvalues(batch_losses(m, batches), list(unique_parameters(m)), 1, max_iters=300,
                                  tol=1e-7).values[0] for m in (tied, untied)]
    assert abs(values[0] - values[1]) > 0.01 * abs(values[1])


def test_analysis_leaves_the_model_as_it_was_and_repeats_exactly():
    model = tiny_vit("grouped", depth=2).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = random_batches(dtype=torch.float32)
    options = dict(top_k=1, max_iters=5, tol=1e-3, trace_samples=3, rho=0.05, adaptive=True, seed=1)
    first = analyze_sharpness(model, batches, **options)
    second = analyze_sharpness(model, batches, **options)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and all(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))
    same = ("loss", "top_eigenvalues", "trace", "trace_stderr", "sam_sharpness", "asam_sharpness")
    assert [getattr(first, key) for key in same] == [getattr(second, key) for key in same]
    assert first.sam_sharpness > 0 and first.asam_sharpness is not None


def test_options_are_checked():
    model = tiny_vit()
    with pytest.raises(VitreduceError, match="--trace-samples"):
        analyze_sharpness(model, random_batches(dtype=torch.float32), trace_samples=1)
    with pytest.raises(VitreduceError, match="--rho"):
        analyze_sharpness(model, random_batches(dtype=torch.float32), rho=0.0)


def write_image_folder(root, classes=3, per_class=4, split="train", size=10):
    rng = np.random.default_rng(0)
    for label in range(classes):
        folder = root / split / f"class{label}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return root


@pytest.fixture
def image_folder(tmp_path):
    return write_image_folder(tmp_path / "data")


@pytest.fixture
def checkpoint(tmp_path):
    model = tiny_vit(in_chans=3)
    return vitreduce.save(model, tmp_path / "tiny.safetensors")


def test_batches_are_a_fixed_seeded_subset(image_folder):
    model = tiny_vit(in_chans=3)
    first = load_batches(model, image_folder, batches=2, batch_size=3, seed=5)
    again = load_batches(model, image_folder, batches=2, batch_size=3, seed=5)
    other = load_batches(model, image_folder, batches=2, batch_size=3, seed=6)
    assert [tuple(images.shape) for images, _ in first] == [(3, 3, 8, 8)] * 2  # the model's own input size
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other, strict=True))


def test_batch_set_errors(image_folder, tmp_path):
    model = tiny_vit(in_chans=3)
    with pytest.raises(VitreduceError, match="does not exist"):
        load_batches(model, tmp_path / "nowhere")
    with pytest.raises(VitreduceError, match="no 'val' folder"):
        load_batches(model, image_folder, split="val")
    with pytest.raises(VitreduceError, match="only 12"):
        load_batches(model, image_folder, batches=4, batch_size=4)
    with pytest.raises(VitreduceError, match="5 classes but .* has 3 class folders"):
        load_batches(tiny_vit(in_chans=3, num_classes=5), image_folder, batches=1, batch_size=4)


def test_cli_json(checkpoint, image_folder, capsys):
    args = ["sharpness", str(checkpoint), "--data", str(image_folder), "--batches", "1", "--batch-size", "4",
            "--iters", "5", "--trace-samples", "3", "--adaptive", "--json"]  # not --quiet: it hides the header
    assert main(args) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert {"top_eigenvalues", "trace", "trace_stderr", "sam_sharpness", "asam_sharpness", "rho", "batches",
            "converged", "eigen_converged"} <= set(result)
    assert result["batches"] == 1 and result["rho"] == 0.05 and len(result["top_eigenvalues"]) == 1
    assert "fused attention disabled for double-backward" in captured.err


def test_cli_text(checkpoint, image_folder, capsys):
    args = ["sharpness", str(checkpoint), "--data", str(image_folder), "--batches", "1", "--batch-size", "4",
            "--top-k", "2", "--iters", "3", "--trace-samples", "2"]  # not --quiet: it hides the header
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "fused attention disabled" in text and "top eigenvalues" in text and "SAM sharpness" in text


def test_cli_bad_input_exits_2(checkpoint, image_folder, tmp_path, capsys):
    base = ["--data", str(image_folder), "--batches", "1", "--batch-size", "4", "--quiet"]
    not_a_checkpoint = tmp_path / "junk.safetensors"
    not_a_checkpoint.write_bytes(b"not a safetensors file")
    other_task = vitreduce.save(tiny_vit(in_chans=3, num_classes=5), tmp_path / "five.safetensors")
    cases = [
        (["sharpness", str(tmp_path / "missing.safetensors"), *base], "does not exist"),
        (["sharpness", str(not_a_checkpoint), *base], "not a readable safetensors"),
        (["sharpness", str(checkpoint), *base, "--data", str(tmp_path / "nodata")], "does not exist"),
        (["sharpness", str(checkpoint), *base, "--batches", "9"], "only 12"),
        (["sharpness", str(other_task), *base], "class folders"),
        (["sharpness", str(checkpoint), *base, "--trace-samples", "1"], "--trace-samples"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
