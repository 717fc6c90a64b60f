"""MACs per op category, against hand formulas written from each architecture's published numbers:
ViT-B/16, Swin-T (window attention, shifted windows, patch merging) and EVA-02-S (SwiGLU, rotary)."""
from __future__ import annotations

import json

import pytest
import timm
import torch

import vitreduce
from vitreduce.cli.main import main
from vitreduce.reduction.accounting import CATEGORIES, count_macs


def _breakdown(name: str, reduction: str = "none", **kwargs) -> dict[str, int]:
    d = vitreduce.describe(vitreduce.create_model(name, reduction=reduction, device="meta", **kwargs))
    return {k: v for k, v in d.macs_breakdown.items() if v}


def _vit(tokens: int, patches: int, width: int, hidden: int, depth: int, patch_in: int, mlp_in: int) -> dict:
    """A plain ViT: per block qkv + proj, QK^T + AV and an MLP of mlp_in -> hidden -> width."""
    return {
        "patch_embed": patches * width * patch_in,
        "attention_proj": depth * tokens * (3 * width * width + width * width),
        "attention_matmul": depth * 2 * tokens * tokens * width,
        "mlp": depth * tokens * (mlp_in * width + hidden * width),
    }


@pytest.mark.parametrize(("reduction", "hidden"), [("none", 3072), ("grouped", 3072), ("shallow", 1536)])
def test_vit_b16_by_hand(reduction, hidden):
    # 224 / 16 = 14 x 14 patches + class token; width 768, 12 blocks, 1000 classes on the class token.
    expected = _vit(tokens=197, patches=196, width=768, hidden=hidden, depth=12, patch_in=3 * 16 * 16, mlp_in=hidden)
    assert _breakdown("vit_base_patch16_224", reduction) == {**expected, "head": 768 * 1000}


def _swin_t(ratio: float) -> dict[str, int]:
    """Swin-T: 56 x 56 tokens of width 96 after the 4 x 4 patches, stages of 2, 2, 6, 2 blocks, 7 x 7
    windows; each stage after the first starts by merging 2 x 2 tokens (4C -> 2C)."""
    counts = dict.fromkeys(["attention_proj", "attention_matmul", "mlp", "patch_merging"], 0)
    side, width, window = 56, 96, 7 * 7
    for stage, depth in enumerate([2, 2, 6, 2]):
        if stage:
            side, width = side // 2, width * 2
            counts["patch_merging"] += side * side * (2 * width) * width
        tokens, windows = side * side, side * side // window  # shifted or not: the same windows
        counts["attention_proj"] += depth * tokens * 4 * width * width
        counts["attention_matmul"] += depth * windows * 2 * window * window * width
        counts["mlp"] += depth * tokens * 2 * width * int(4 * width * ratio)
    return {"patch_embed": 56 * 56 * 96 * 3 * 4 * 4, **counts, "head": 768 * 1000}


@pytest.mark.parametrize(("reduction", "ratio"), [("none", 1), ("grouped", 1), ("shallow", 0.5)])
def test_swin_t_by_hand(reduction, ratio):
    assert _breakdown("swin_tiny_patch4_window7_224", reduction) == _swin_t(ratio)


def test_swin_shifted_windows_cost_what_unshifted_ones_do():
    model = vitreduce.create_model("swin_tiny_patch4_window7_224", device="meta")
    shifts = [tuple(b.shift_size) for layer in model.layers for b in layer.blocks]
    assert (0, 0) in shifts and (3, 3) in shifts  # both kinds present: their counts are the formula's
    for layer in model.layers:
        for block in layer.blocks:  # remove every shift: the counts stay
            block.shift_size, block.attn_mask = (0, 0), None
    assert vitreduce.describe(model).macs_breakdown == vitreduce.describe(
        vitreduce.create_model("swin_tiny_patch4_window7_224", device="meta")).macs_breakdown


@pytest.mark.parametrize(("reduction", "hidden"), [("none", 1024), ("grouped", 1024), ("shallow", 512)])
def test_eva02_s_by_hand(reduction, hidden):
    # 224 / 14 = 16 x 16 patches + class token, width 384, 12 blocks; SwiGLU: gate and value (2 x hidden)
    # then hidden -> width. Rotary embeddings multiply elementwise: no category of their own.
    expected = _vit(tokens=257, patches=256, width=384, hidden=hidden, depth=12, patch_in=3 * 14 * 14,
                    mlp_in=2 * hidden)
    assert _breakdown("eva02_small_patch14_224", reduction, num_classes=1000) == {**expected, "head": 384 * 1000}


def test_swin_v2_position_bias_mlp_is_its_own_category():
    breakdown = _breakdown("swinv2_tiny_window8_256")
    model = timm.create_model("swinv2_tiny_window8_256", pretrained=False, device="meta")
    cpb = [b.attn.cpb_mlp for layer in model.layers for b in layer.blocks]
    # Per block a (2W-1)^2 table of 2 coordinates through 2 -> 512 -> heads.
    expected = sum((2 * 8 - 1) ** 2 * (2 * 512 + 512 * m[2].out_features) for m in cpb)
    assert breakdown["position_bias"] == expected


@pytest.mark.parametrize("name", ["vit_base_patch16_224", "swin_tiny_patch4_window7_224", "eva02_small_patch14_224",
                                  "deit_tiny_distilled_patch16_224", "vit_relpos_medium_patch16_cls_224"])
def test_categories_sum_to_the_totals(name):
    model = vitreduce.create_model(name, reduction="grouped+shallow", device="meta")
    d = vitreduce.describe(model)
    linear, attention = count_macs(model)
    assert list(d.macs_breakdown) == list(CATEGORIES) and d.macs_breakdown["other"] == 0
    assert sum(d.macs_breakdown.values()) == linear + attention
    assert d.macs_breakdown["attention_matmul"] == attention
    assert linear + attention == d.macs_total and linear == d.macs_linear and "macs_breakdown" not in d.record()


def test_inspect_breakdown_and_json(capsys):
    assert main(["inspect", "swin_tiny_patch4_window7_224", "--reduction", "none", "--reduction", "shallow",
                 "--breakdown"]) == 0
    text = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.startswith(CATEGORIES)}
    assert rows["patch_merging"] == [f"{_swin_t(1)['patch_merging'] / 1e9:.4f}"] * 2
    assert rows["mlp"] == [f"{_swin_t(r)['mlp'] / 1e9:.4f}" for r in (1, 0.5)]
    assert "0 MACs: relative position bias" in text and "position_bias" not in rows
    assert main(["inspect", "swin_tiny_patch4_window7_224", "--reduction", "none", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert {k: v for k, v in row["macs_breakdown"].items() if v} == _swin_t(1)


def test_breakdown_on_a_real_forward_matches_meta():
    torch.manual_seed(0)
    model = vitreduce.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=2,
                                   num_heads=2, num_classes=5)
    meta = vitreduce.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=2,
                                  num_heads=2, num_classes=5, device="meta")
    assert vitreduce.describe(model).macs_breakdown == vitreduce.describe(meta).macs_breakdown
