"""Stage-based models (Swin, Swin V2): grouping within a stage, odd and single-block stages, per-block
shallow and thin, Swin-T counted by hand, checkpoints and the CLI."""
from __future__ import annotations

import math

import pytest
import timm
import torch

import vitreduce
from vitreduce.cli.main import main
from vitreduce.errors import VitreduceError
from vitreduce.reduction.blocks import block_stages
from vitreduce.reduction.gated import hidden_units
from vitreduce.reduction.surgery import unique_named_mlps
from vitreduce.train.config import ModelConfig

# Three stages of 2, 3 and 1 blocks (widths 16, 32, 64): an even, an odd and a single-block stage.
TINY_SWIN = dict(img_size=32, patch_size=4, embed_dim=16, depths=[2, 3, 1], num_heads=[1, 2, 4], window_size=4,
                 num_classes=5)


def _swin(reduction: str = "none", name: str = "swin_tiny_patch4_window7_224") -> torch.nn.Module:
    torch.manual_seed(0)
    return vitreduce.create_model(name, reduction=reduction, **TINY_SWIN).eval()


def _layout(model) -> list[list[int]]:
    """Per stage, the index (within the stage) of the block whose MLP each block uses."""
    layout = []
    for stage in block_stages(model):
        owners = {}
        layout.append([owners.setdefault(id(ref.block.mlp), ref.index) for ref in stage])
    return layout


@pytest.mark.parametrize(("spec", "layout"), [
    ("grouped", [[0, 0], [0, 0, 2], [0]]),  # odd stage: last group of one; single block: its own MLP
    ("grouped:size=3", [[0, 0], [0, 0, 0], [0]]),  # a stage shorter than size is one group
    ("grouped:size=2,pattern=cycle", [[0, 0], [0, 1, 0], [0]]),  # G = ceil(3 / 2) = 2 groups in stage 1
    ("grouped:size=1", [[0, 1], [0, 1, 2], [0]]),
])
def test_groups_stay_within_a_stage(spec, layout):
    assert _layout(_swin(spec)) == layout


def test_group_scaling_follows_the_group_size():
    """1/sqrt(n) with n the blocks sharing the MLP: a last group of one and a single-block stage keep
    their MLP as it was."""
    full, grouped = _swin(), _swin("grouped")
    for stage_full, stage_grouped, sizes in zip(block_stages(full), block_stages(grouped), ([2, 2], [2, 2, 1], [1]),
                                                strict=True):
        for ref_full, ref_grouped, n in zip(stage_full, stage_grouped, sizes, strict=True):
            source = stage_full[ref_full.index - ref_full.index % 2].block.mlp  # the group's first block
            torch.testing.assert_close(ref_grouped.block.mlp.fc1.weight, source.fc1.weight / math.sqrt(n))
            torch.testing.assert_close(ref_grouped.block.mlp.fc2.bias, source.fc2.bias)


def test_size_beyond_the_deepest_stage_is_refused():
    with pytest.raises(VitreduceError, match="deepest stage .of 3. 3; use 1..3"):
        _swin("grouped:size=4")


@pytest.mark.parametrize("spec", ["shallow", "thin", "shallow:keep=magnitude"])
def test_shallow_and_thin_halve_every_block(spec):
    full, reduced = _swin(), _swin(spec)
    widths = [[hidden_units(r.block.mlp) for r in stage] for stage in block_stages(reduced)]
    assert widths == [[w // 2 for w in (hidden_units(r.block.mlp) for r in stage)] for stage in block_stages(full)]
    assert reduced(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_thin_swin_uses_timm_vit_init():
    wide = dict(TINY_SWIN, embed_dim=128, depths=[2], num_heads=[4])
    mlp = vitreduce.create_model("swin_tiny_patch4_window7_224", reduction="thin", **wide).layers[0].blocks[1].mlp
    assert mlp.fc1.weight.std().item() == pytest.approx(0.02, rel=0.1) and bool((mlp.fc1.bias == 0).all())


def test_swin_v2_reduces_and_keeps_sharing_through_a_checkpoint(tmp_path):
    for name in ("swin_tiny_patch4_window7_224", "swinv2_tiny_window8_256"):
        model = _swin("grouped+shallow", name)
        loaded = vitreduce.load(vitreduce.save(model, tmp_path / f"{name}.safetensors")).eval()
        assert _layout(loaded) == [[0, 0], [0, 0, 2], [0]]
        images = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(loaded(images), model(images))


def _swin_t_params(hidden_ratio: float = 4.0, grouped: bool = False) -> tuple[int, int]:
    """(params, MLP params) of Swin-T: patch 4, width 96 doubling per stage, depths 2-2-6-2, heads 3-6-12-24,
    window 7 (relative position bias table (2 x 7 - 1)^2 x heads), patch merging 4C -> 2C without bias."""
    params = 3 * 16 * 96 + 96 + 2 * 96  # patch embedding conv and its norm
    mlps = 0
    for stage, (depth, heads) in enumerate(zip((2, 2, 6, 2), (3, 6, 12, 24), strict=True)):
        c = 96 * 2**stage
        if stage:
            params += 2 * 2 * c + 2 * c * c  # merging: norm over 4 (C / 2), Linear 4 (C / 2) -> C
        hidden = int(c * hidden_ratio)
        mlp = c * hidden + hidden + hidden * c + c
        unique = math.ceil(depth / 2) if grouped else depth
        params += depth * (2 * c + 3 * c * c + 3 * c + c * c + c + 13 * 13 * heads + 2 * c) + unique * mlp
        mlps += unique * mlp
    return params + 2 * 768 + 768 * 1000 + 1000, mlps


def _swin_t_macs(hidden_ratio: float = 4.0) -> tuple[int, int]:
    """(linear, attention) MACs of Swin-T on 224 x 224: 56^2 tokens at stage 0, a quarter per stage;
    each window of 49 tokens does QK^T and AV (shifted windows and the bias table add no MACs)."""
    linear, attention = 56 * 56 * 96 * 3 * 16, 0
    for stage, depth in enumerate((2, 2, 6, 2)):
        tokens, c = (56 // 2**stage) ** 2, 96 * 2**stage
        if stage:
            linear += tokens * 2 * c * c  # merging
        linear += depth * tokens * (4 * c * c + 2 * c * int(c * hidden_ratio))
        attention += depth * 2 * tokens * 49 * c
    return linear + 768 * 1000, attention


@pytest.mark.parametrize(("reduction", "ratio", "grouped"), [("none", 4.0, False), ("grouped", 4.0, True),
                                                             ("shallow", 2.0, False)])
def test_swin_t_counted_by_hand(reduction, ratio, grouped):
    d = vitreduce.describe(vitreduce.create_model("swin_tiny_patch4_window7_224", reduction=reduction, device="meta"))
    params, mlp_params = _swin_t_params(ratio, grouped)
    linear, attention = _swin_t_macs(ratio)
    assert (d.params, d.mlp_params, d.unique_mlps) == (params, mlp_params, 6 if grouped else 12)  # 1 + 1 + 3 + 1 groups
    assert d.mlp_hidden == [int(96 * 2**s * ratio) for s in range(4)] and d.expansion == ratio
    assert (d.macs_linear, d.macs_total) == (linear, linear + attention)


def test_inspect_prints_swin_and_eva_tables(capsys):
    for name in ("swin_tiny_patch4_window7_224", "eva02_small_patch14_224"):
        assert main(["inspect", name, "--reduction", "none", "--reduction", "grouped", "--reduction", "shallow"]) == 0
        text = capsys.readouterr().out
        for reduction in ("none", "grouped", "shallow"):
            d = vitreduce.describe(vitreduce.create_model(name, reduction=reduction, device="meta"))
            assert f"{d.params:,}" in text and f"{d.mlp_params:,}" in text


def test_each_unique_mlp_is_named_by_its_first_block():
    """The names training logs per-MLP gradient norms under are the model's own module names."""
    model = _swin("grouped")
    names = [name for name, _ in unique_named_mlps(model)]
    assert names == ["layers.0.blocks.0.mlp", "layers.1.blocks.0.mlp", "layers.1.blocks.2.mlp", "layers.2.blocks.0.mlp"]
    assert all(model.get_submodule(name) is mlp for name, mlp in unique_named_mlps(model))


def test_a_train_config_describes_a_tiny_swin():
    cfg = ModelConfig(name="swin_tiny_patch4_window7_224", reduction="grouped", **TINY_SWIN)
    model = vitreduce.create_model(cfg.name, reduction=cfg.reduction, **cfg.timm_kwargs())
    assert _layout(model) == [[0, 0], [0, 0, 2], [0]]
    with pytest.raises(ValueError, match=r"num_heads\[1\] = 3 does not divide stage 1's width 32"):
        ModelConfig(name="swin_tiny_patch4_window7_224", **{**TINY_SWIN, "num_heads": [1, 3, 4]})


@pytest.mark.parametrize(("name", "unique", "hidden"), [
    ("swin_tiny_patch4_window7_224_grouped_mlp", 6, [384, 768, 1536, 3072]),
    ("swin_small_patch4_window7_224_shallow_mlp", 24, [192, 384, 768, 1536]),
    ("eva02_small_patch14_224_thin_mlp", 12, 512),
])
def test_registered_variants_of_swin_and_eva(name, unique, hidden):
    d = vitreduce.describe(timm.create_model(name, num_classes=10, device="meta"))
    assert (d.unique_mlps, d.mlp_hidden, d.model) == (unique, hidden, name.rsplit("_", 2)[0])
