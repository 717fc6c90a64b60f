"""Gated MLPs (GluMlp, SwiGLUPacked, SwiGLU) and EVA-02: slicing checked against timm's own forward,
magnitude scores, grouped scaling, thin widths and init, the MLP norm, and EVA-02-S counted by hand."""
from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
from conftest import TINY_VIT
from torch import nn

import vitreduce
from vitreduce.reduction.gated import hidden_units, mlp_kind
from vitreduce.reduction.surgery import unique_mlps

TINY_EVA = dict(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, num_classes=5)
MLPS = {  # timm MLP -> vitreduce's kind
    "Mlp": (timm.layers.Mlp, "plain"),
    "GluMlp": (timm.layers.GluMlp, "packed"),  # [value | gate], sigmoid
    "SwiGLUPacked": (timm.layers.SwiGLUPacked, "packed"),  # [gate | value], SiLU
    "SwiGLU": (timm.layers.SwiGLU, "split"),
}


def _vit(mlp: str) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", mlp_layer=MLPS[mlp][0], **TINY_VIT).eval()


def _silence(mlp: nn.Module, units: torch.Tensor, what: str) -> None:
    """Make ``units`` contribute nothing to the MLP's output by zeroing one of their weights: the fc2
    columns, or the value rows (value 0: gate x 0 = 0), or the gate rows (SiLU(0) = 0)."""
    with torch.no_grad():
        if what == "output":
            mlp.fc2.weight[:, units] = 0
            return
        kind, h = mlp_kind(mlp), hidden_units(mlp)
        if kind == "split":
            layer, rows = (mlp.fc1_x if what == "value" else mlp.fc1_g), units
        elif kind == "packed":  # which half is which follows timm's forward
            value_first = mlp.gate_last
            layer, rows = mlp.fc1, units + (0 if (what == "value") == value_first else h)
        else:
            layer, rows = mlp.fc1, units
        layer.weight[rows] = 0
        if layer.bias is not None:
            layer.bias[rows] = 0


@pytest.mark.parametrize("mlp", list(MLPS))
def test_shallow_equals_the_full_model_whose_dropped_units_are_silent(mlp):
    """keep=first drops units h..: with their fc2 columns zero the full model computes the same function."""
    model = _vit(mlp)
    assert mlp_kind(model.blocks[0].mlp) == MLPS[mlp][1]
    hidden = hidden_units(model.blocks[0].mlp)
    for block in model.blocks:
        _silence(block.mlp, torch.arange(hidden // 2, hidden), "output")
    images = torch.randn(2, 3, 16, 16)
    expected = model(images)
    vitreduce.reduce(model, "shallow:ratio=0.5")
    assert hidden_units(model.blocks[0].mlp) == hidden // 2
    torch.testing.assert_close(model(images), expected)


@pytest.mark.parametrize(("mlp", "what"), [("Mlp", "value"), ("GluMlp", "value"), ("GluMlp", "output"),
                                           ("SwiGLUPacked", "gate"), ("SwiGLUPacked", "value"),
                                           ("SwiGLU", "gate"), ("SwiGLU", "value"), ("SwiGLU", "output")])
def test_keep_magnitude_scores_a_unit_by_gate_value_and_output(mlp, what):
    """Silence a random half of the units through one of their weights: magnitude keeps the other half
    (the packing respected) and the shallow model equals the full one."""
    model = _vit(mlp)
    hidden = hidden_units(model.blocks[0].mlp)
    generator = torch.Generator().manual_seed(1)
    for block in model.blocks:
        _silence(block.mlp, torch.randperm(hidden, generator=generator)[: hidden // 2], what)
    images = torch.randn(2, 3, 16, 16)
    expected = model(images)
    vitreduce.reduce(model, "shallow:ratio=0.5,keep=magnitude")
    torch.testing.assert_close(model(images), expected)


@pytest.mark.parametrize("mlp", ["GluMlp", "SwiGLU"])
def test_grouped_scales_the_input_projections_and_fc2_weight(mlp):
    model = _vit(mlp)
    before = {name: t.clone() for name, t in model.blocks[0].mlp.named_parameters()}
    vitreduce.reduce(model, "grouped")
    shared = model.blocks[0].mlp
    assert model.blocks[1].mlp is shared and model.blocks[2].mlp is not shared
    for name, tensor in shared.named_parameters():
        factor = 1.0 if name == "fc2.bias" else 1 / math.sqrt(2)  # gate, value (fc1's role) and fc2.weight
        torch.testing.assert_close(tensor, before[name] * factor)


def test_eva02_mlp_norm_is_sliced_shared_and_rebuilt():
    """scale_mlp=True puts a LayerNorm over the hidden units inside SwiGLU."""
    torch.manual_seed(0)
    full = vitreduce.create_model("eva02_small_patch14_224", scale_mlp=True, **TINY_EVA)
    with torch.no_grad():
        for block in full.blocks:
            block.mlp.norm.weight.normal_()
    weights = [block.mlp.norm.weight.clone() for block in full.blocks]
    hidden = hidden_units(full.blocks[0].mlp)
    vitreduce.reduce(full, "grouped+shallow:ratio=0.5")
    for index in (0, 2):
        norm = full.blocks[index].mlp.norm
        assert norm.normalized_shape == (hidden // 2,) and full.blocks[index + 1].mlp.norm is norm
        torch.testing.assert_close(norm.weight, weights[index][: hidden // 2])  # the group's first, unscaled
    thin = vitreduce.create_model("eva02_small_patch14_224", reduction="thin", scale_mlp=True, **TINY_EVA)
    assert thin.blocks[0].mlp.norm.weight.shape == (hidden // 2,) and bool((thin.blocks[0].mlp.norm.weight == 1).all())
    assert thin(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_thin_eva02_uses_evas_own_init():
    """EVA: trunc-normal std 0.02 on every linear layer, zero biases, fc2 / sqrt(2 (layer + 1))."""
    wide = dict(TINY_EVA, embed_dim=128, depth=2)
    torch.manual_seed(0)
    model = vitreduce.create_model("eva02_small_patch14_224", reduction="thin", **wide)
    mlp = model.blocks[1].mlp
    assert mlp_kind(mlp) == "packed" and not mlp.gate_last  # SwiGLUPacked
    assert mlp.fc1.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert mlp.fc2.weight.std().item() == pytest.approx(0.02 / math.sqrt(4), rel=0.1)
    assert bool((mlp.fc1.bias == 0).all())


def test_eva02_small_counted_by_hand():
    """EVA-02-S/14: 16 x 16 patches + cls = 257 tokens, width 384, SwiGLUPacked with 1024 hidden units
    (fc1 384 -> 2 x 1024, fc2 1024 -> 384), qkv without a k bias (q and v biases), rotary embeddings
    (no multiply-accumulates). timm's default is headless (num_classes=0)."""
    tokens, width, hidden, depth = 257, 384, 1024, 12
    mlp = width * 2 * hidden + 2 * hidden + hidden * width + width
    attn = width * 3 * width + 2 * width + width * width + width  # qkv weight, q and v biases, proj
    block = attn + mlp + 2 * 2 * width  # two LayerNorms
    embed = 3 * 14 * 14 * width + width + (256 + 1) * width + width  # conv, pos_embed, cls token
    params = embed + depth * block + 2 * width  # final norm; timm builds it headless (num_classes=0)
    for reduction, unique, kept in (("none", 12, hidden), ("grouped", 6, hidden), ("shallow", 12, hidden // 2)):
        d = vitreduce.describe(vitreduce.create_model("eva02_small_patch14_224", reduction=reduction, device="meta"))
        mlp_r = width * 2 * kept + 2 * kept + kept * width + width
        assert (d.params, d.mlp_params, d.unique_mlps, d.mlp_hidden) == (
            params - depth * mlp + unique * mlp_r, unique * mlp_r, unique, kept)
        linear = 256 * width * 3 * 14 * 14 + depth * tokens * (4 * width * width + 3 * kept * width)
        attention = depth * 2 * tokens * tokens * width
        assert (d.macs_linear, d.macs_total) == (linear, linear + attention)


def test_thin_keeps_a_vit_glumlp_gate_init():
    """timm's ViT init calls GluMlp.init_weights (gate weights near zero, gate bias one); thin does too."""
    model = vitreduce.reduce(_vit("GluMlp"), "thin")
    fc1 = model.blocks[0].mlp.fc1
    half = fc1.out_features // 2
    assert fc1.weight[half:].abs().max().item() < 1e-4 and bool((fc1.bias[half:] == 1).all())
    assert fc1.weight[:half].std().item() == pytest.approx(0.02, rel=0.25)


def test_gated_checkpoints_keep_sharing(tmp_path):
    model = vitreduce.create_model("eva02_small_patch14_224", reduction="grouped+shallow", **TINY_EVA).eval()
    loaded = vitreduce.load(vitreduce.save(model, tmp_path / "eva.safetensors")).eval()
    assert loaded.blocks[0].mlp is loaded.blocks[1].mlp and len(unique_mlps(loaded)) == 2
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(images), model(images))



def _output_ratio(mlp: str, scale: str, norm: bool = False, n: int = 2) -> float:
    """std of the shared MLP's output over the full model's (its first block's), on unit-variance tokens."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", mlp_layer=MLPS[mlp][0], scale_mlp_norm=norm,
                              **TINY_VIT).eval()
    full = copy.deepcopy(model.blocks[0].mlp)
    vitreduce.reduce(model, f"grouped:size={n},scale={scale}")
    tokens = torch.randn(4096, TINY_VIT["embed_dim"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return float(model.blocks[0].mlp(tokens).std() / full(tokens).std())


@pytest.mark.parametrize(("mlp", "norm", "auto"), [("Mlp", False, 0.50), ("Mlp", True, 0.71), ("GluMlp", False, 0.32),
                                                     ("SwiGLUPacked", False, 0.35), ("SwiGLU", False, 0.32),
                                                     ("SwiGLU", True, 0.71)])
def test_the_output_rule_starts_every_mlp_kind_at_the_plain_mlps_output_scale(mlp, norm, auto):
    """Under scale=auto the shared MLP's output at init (n = 2) is about 1/n of the full one's only for a plain
    MLP: a gated MLP scales gate, value and fc2 (0.32-0.35), a norm over the hidden units undoes fc1's factor
    (0.71 = 1/sqrt(2)). scale=output gives every kind exactly 1/n."""
    assert _output_ratio(mlp, "auto", norm) == pytest.approx(auto, abs=0.02)  # docs/reductions.md's table
    for n in (2, 3):
        assert _output_ratio(mlp, "output", norm, n) == pytest.approx(1 / n, rel=1e-4)
