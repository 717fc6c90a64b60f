"""Reduced models as timm feature backbones: features_only for registered names of every family,
feature_info that matches the outputs, forward_intermediates equal to a manual forward through the
blocks, sharing kept through the wrapper, and a vitreduce model file loaded into a backbone built first."""
from __future__ import annotations

import pytest
import timm
import torch
from conftest import tiny_model

import vitreduce
from vitreduce.reduction.architecture import check_kwargs
from vitreduce.reduction.params import alias_groups

VIT = dict(img_size=32, patch_size=8, depth=4, embed_dim=32, num_heads=2)
SWIN = dict(img_size=64, window_size=4, embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8])
EVA = dict(img_size=28, patch_size=7, depth=4, embed_dim=32, num_heads=2)
CASES = [("vit_tiny_patch16_224_grouped_mlp", VIT, [1, 3]),
         ("swin_tiny_patch4_window7_224_grouped_mlp", SWIN, None),
         ("eva02_small_patch14_224_shallow_mlp", EVA, [0, 2, 3])]


def _shared_mlps(model: torch.nn.Module) -> int:
    return sum(1 for name, first in alias_groups(model).items() if name != first and ".mlp." in name)


@pytest.mark.parametrize(("name", "kwargs", "indices"), CASES)
def test_features_only_matches_feature_info(name, kwargs, indices):
    torch.manual_seed(0)
    backbone = timm.create_model(name, features_only=True, out_indices=indices, pretrained=False, **kwargs).eval()
    size = kwargs["img_size"]
    outs = backbone(torch.randn(2, 3, size, size))
    info = backbone.feature_info
    assert len(outs) == len(info.channels()) == (len(indices) if indices else 4)
    nhwc = "swin" in name  # timm's Swin stages are channels-last, as for the unreduced model
    for out, channels, reduction in zip(outs, info.channels(), info.reduction(), strict=True):
        c, h, w = (out.shape[3], out.shape[1], out.shape[2]) if nhwc else out.shape[1:]
        assert (c, h, w) == (channels, size // reduction, size // reduction)
        assert torch.isfinite(out).all()
    if "grouped" in name:
        assert _shared_mlps(backbone) > 0  # the wrapper holds the reduced model's shared modules


def test_feature_kwargs_stay_out_of_descriptions():
    """timm's feature kwargs are for a caller building a backbone, never for a checkpoint header or a config."""
    for key, value in (("features_only", True), ("out_indices", [1]), ("feature_cfg", {})):
        with pytest.raises(vitreduce.VitreduceError, match="unknown timm kwarg"):
            check_kwargs({key: value})
    with pytest.raises(vitreduce.VitreduceError, match="only apply with features_only"):
        timm.create_model("vit_tiny_patch16_224_grouped_mlp", out_indices=[1], **VIT)
    with pytest.raises(vitreduce.VitreduceError, match="unknown feature_cfg key"):
        timm.create_model("vit_tiny_patch16_224_grouped_mlp", features_only=True, feature_cfg={"url": "x"}, **VIT)
    with pytest.raises(vitreduce.VitreduceError, match="no pretrained weights"):
        timm.create_model("vit_tiny_patch16_224_grouped_mlp", features_only=True, pretrained=True, **VIT)
    with pytest.raises(vitreduce.VitreduceError, match="could make timm fetch weights"):
        timm.create_model("vit_tiny_patch16_224_grouped_mlp", features_only=True,
                          pretrained_cfg_overlay={"file": "weights.pth"}, **VIT)


def _manual_vit(model, x, indices, norm=False):
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    outs = []
    for i, block in enumerate(model.blocks):
        x = block(x)
        if i in indices:
            tokens = (model.norm(x) if norm else x)[:, model.num_prefix_tokens:]  # (B, N, C) patch tokens only
            side = int(tokens.shape[1] ** 0.5)
            outs.append(tokens.reshape(x.shape[0], side, side, -1).permute(0, 3, 1, 2))
    return outs


@pytest.mark.parametrize("how", ["create_model", "registered", "load"])
def test_forward_intermediates_equals_manual_forward(how, tmp_path, images):
    model = tiny_model("grouped")
    if how == "registered":
        torch.manual_seed(0)
        model = timm.create_model("vit_tiny_patch16_224_grouped_mlp", img_size=16, patch_size=4, embed_dim=32,
                                  depth=4, num_heads=2, num_classes=5).eval()
    elif how == "load":
        model = vitreduce.load(vitreduce.save(model, tmp_path / "m.safetensors")).eval()
    with torch.no_grad():
        got = model.forward_intermediates(images, indices=[0, 2, 3], intermediates_only=True)
        want = _manual_vit(model, images, {0, 2, 3})
        normed = model.forward_intermediates(images, indices=2, norm=True, output_fmt="NLC", intermediates_only=True)
        want_normed = [w.flatten(2).transpose(1, 2) for w in _manual_vit(model, images, {2, 3}, norm=True)]
    for g, w in zip(got + normed, want + want_normed, strict=True):
        assert torch.equal(g, w)  # the same modules in the same order: no rounding difference to allow for


def test_swin_forward_intermediates_equals_manual_forward():
    torch.manual_seed(0)
    model = vitreduce.create_model("swin_tiny_patch4_window7_224", reduction="grouped", **SWIN).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got = model.forward_intermediates(x, intermediates_only=True)
        h, want = model.patch_embed(x), []
        for stage in model.layers:
            h = stage(h)
            want.append(h.permute(0, 3, 1, 2))  # NHWC stage output -> NCHW, as timm returns
    assert len(got) == 4 and all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_checkpoint_loads_into_backbone_built_first(tmp_path):
    torch.manual_seed(1)
    trained = timm.create_model("vit_tiny_patch16_224_grouped_mlp", num_classes=3, **VIT)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))  # weights no fresh build has
    path = vitreduce.save(trained, tmp_path / "model.safetensors")
    torch.manual_seed(2)
    backbone = timm.create_model("vit_tiny_patch16_224_grouped_mlp", num_classes=3, features_only=True,
                                 out_indices=[1, 3], **VIT).eval()
    vitreduce.load_backbone_weights(backbone, path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = trained.eval().forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        got = backbone(x)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    blocks = backbone.model.blocks
    assert blocks[0].mlp is blocks[1].mlp and blocks[2].mlp is blocks[3].mlp  # sharing kept
    other = timm.create_model("vit_tiny_patch16_224_shallow_mlp", num_classes=3, features_only=True,
                              out_indices=[1, 3], **VIT)
    with pytest.raises(vitreduce.VitreduceError, match="does not fit this backbone"):
        vitreduce.load_backbone_weights(other, path)


def test_feature_backbone_of_a_loaded_model(tmp_path):
    path = vitreduce.save(tiny_model("shallow"), tmp_path / "m.safetensors")
    backbone = vitreduce.feature_backbone(vitreduce.load(path), out_indices=2, feature_cfg={"output_fmt": "NLC"})
    outs = backbone(torch.zeros(1, 3, 16, 16))
    assert [tuple(o.shape) for o in outs] == [(1, 16, 32)] * 2


def test_checkpoint_loads_into_a_swin_stage_backbone(tmp_path):
    """timm's stage-list wrapper renames Swin's modules (layers.0 -> layers_0): loading still matches every tensor."""
    torch.manual_seed(3)
    trained = timm.create_model("swin_tiny_patch4_window7_224_grouped_mlp", num_classes=2, **SWIN)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    path = vitreduce.save(trained, tmp_path / "swin.safetensors")
    backbone = timm.create_model("swin_tiny_patch4_window7_224_grouped_mlp", num_classes=2, features_only=True,
                                 **SWIN).eval()
    vitreduce.load_backbone_weights(backbone, path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = [w.permute(0, 2, 3, 1) for w in trained.eval().forward_intermediates(x, intermediates_only=True)]
        got = backbone(x)
    assert len(got) == 4 and all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert backbone.layers_0.blocks[0].mlp is backbone.layers_0.blocks[1].mlp


def test_a_framework_needs_only_to_import_vitreduce_reduction():
    """What a framework config does (`custom_imports=["vitreduce.reduction"]`), in a fresh interpreter: the
    reduced names are then timm's, features_only included (as after `import timm, vitreduce`)."""
    import subprocess
    import sys

    code = ("import timm\n"
            "assert 'vit_tiny_patch16_224_grouped_mlp' not in timm.list_models('*_mlp')\n"
            "import vitreduce.reduction\n"
            "m = timm.create_model('vit_tiny_patch16_224_grouped_mlp', features_only=True, out_indices=[1], "
            "pretrained=False, img_size=32, patch_size=8, depth=2, embed_dim=16, num_heads=2)\n"
            "print(m.feature_info.channels())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[16]"
