"""Exact accounting of the paper's three ViT-B/16 models (paper-facts.md), built on the meta device."""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

import vitreduce
from vitreduce.reduction.accounting import count_macs

PAPER = {  # reduction: (params, MLP params, unique MLPs, MLP hidden, GMACs linear, GMACs incl. attention)
    "none": (86_567_656, 56_669_184, 12, 3072, 16.85, 17.56),
    "grouped": (58_233_064, 28_334_592, 6, 3072, 16.85, 17.56),
    "shallow": (58_237_672, 28_339_200, 12, 1536, 11.27, 11.99),
    "thin": (58_237_672, 28_339_200, 12, 1536, 11.27, 11.99),
}


@pytest.mark.parametrize("reduction", list(PAPER))
def test_vit_b16_figures_match_the_paper(reduction):
    model = vitreduce.create_model("vit_base_patch16_224", reduction=reduction, device="meta")
    d = vitreduce.describe(model)
    params, mlp_params, unique, hidden, macs_linear, macs_total = PAPER[reduction]
    assert (d.params, d.mlp_params, d.unique_mlps, d.mlp_hidden) == (params, mlp_params, unique, hidden)
    assert round(d.macs_linear_g, 2) == macs_linear
    assert round(d.macs_total_g, 2) == macs_total


def test_macs_by_hand_for_a_tiny_model():
    model = tiny_model()  # 16x16 image, patch 4 -> 16 patches + cls = 17 tokens, width 32, hidden 128, 4 blocks
    tokens, width, hidden, depth = 17, 32, 128, 4
    patch = 16 * width * (3 * 4 * 4)
    per_block = tokens * width * (3 * width + width + 2 * hidden)
    head = width * 5
    linear, attention = count_macs(model)
    assert linear == patch + depth * per_block + head
    assert attention == depth * 2 * tokens * tokens * width


def test_macs_do_not_depend_on_fused_attention_or_device():
    fused = tiny_model()
    unfused = tiny_model()
    for module in unfused.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    meta = vitreduce.create_model("vit_tiny_patch16_224", device="meta", img_size=16, patch_size=4, embed_dim=32,
                                  depth=4, num_heads=2, num_classes=5)
    assert count_macs(fused) == count_macs(unfused) == count_macs(meta)


def test_shared_parameters_count_once_but_compute_twice():
    full, grouped = vitreduce.describe(tiny_model()), vitreduce.describe(tiny_model("grouped"))
    assert grouped.params == full.params - full.mlp_params // 2
    assert grouped.macs_linear == full.macs_linear
    assert sum(p.numel() for p in tiny_model("grouped").parameters()) == grouped.params


def test_img_size_changes_the_mac_count():
    model = vitreduce.create_model("vit_base_patch16_224", device="meta", img_size=384, dynamic_img_size=True)
    assert vitreduce.describe(model).macs_total_g > 3 * 17.56
    with torch.device("meta"):
        assert vitreduce.describe(model, img_size=224).macs_linear_g == pytest.approx(16.85, abs=0.005)


def test_a_tiny_models_macs_are_exact_and_nonzero_in_the_record_and_the_table():
    from vitreduce.cli.inspect_cmd import format_table

    full, shallow = vitreduce.describe(tiny_model()), vitreduce.describe(tiny_model("shallow"))
    linear, attention = count_macs(tiny_model("shallow"))
    assert shallow.record()["macs_linear"] == linear and shallow.record()["macs_total"] == linear + attention
    assert isinstance(shallow.record()["macs_total"], int) and "macs_linear_g" not in shallow.record()
    table = format_table([full, shallow]).splitlines()
    assert "KMACs linear" in table[1] and "0.00" not in table[4]
    ratio = f"{shallow.macs_linear / full.macs_linear:.3f}"
    assert ratio != "1.000" and table[4].endswith(ratio)  # the MACs ratio, from the exact counts
