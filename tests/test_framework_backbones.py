"""The calls detection and segmentation frameworks make to build a timm backbone, made exactly as they make
them, against the reduced registered names; and a vitreduce model file loaded into what they built, sharing
kept (docs/dense-tasks.md).

- mmsegmentation's ``TIMMBackbone.__init__`` (mmseg 1.x, read at 1.0.0rc5): ``timm.create_model(model_name=...,
  features_only=..., pretrained=..., in_chans=in_channels, checkpoint_path='', **kwargs)`` (defaults
  features_only=True, pretrained=True, checkpoint_path='', in_channels=3), then it sets the wrapped model's
  ``global_pool``, ``fc`` and ``classifier`` to None. mmseg itself needs the compiled mmcv: not installed here,
  so the call is made as it is written there.
- mmpretrain's ``TIMMBackbone.__init__`` (mmpretrain 1.2.0; what mmdetection configs name as
  ``mmpretrain.TIMMBackbone``): the same call with defaults features_only=False, pretrained=False, then
  ``reset_classifier(0, '')`` where the built model has it.
- Hugging Face transformers' ``TimmBackbone`` (installed from requirements.lock): built for real.
"""
from __future__ import annotations

import pytest
import timm
import torch
from test_features import CASES, SWIN, VIT, _shared_mlps
from torch import nn

import vitreduce


class MMSegTimmBackbone(nn.Module):
    """mmseg 1.x's TIMMBackbone.__init__ and forward, line for line, without mmengine's BaseModule."""

    def __init__(self, model_name, features_only=True, pretrained=True, checkpoint_path="", in_channels=3, **kwargs):
        super().__init__()
        self.timm_model = timm.create_model(model_name=model_name, features_only=features_only, pretrained=pretrained,
                                            in_chans=in_channels, checkpoint_path=checkpoint_path, **kwargs)
        self.timm_model.global_pool = None
        self.timm_model.fc = None
        self.timm_model.classifier = None

    def forward(self, x):
        return self.timm_model(x)


def _trained(name: str, kwargs: dict, tmp_path, seed: int = 1):
    """A model of `name` with weights no fresh build has, and its vitreduce model file."""
    torch.manual_seed(seed)
    model = timm.create_model(name, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return model.eval(), vitreduce.save(model, tmp_path / "model.safetensors")


@pytest.mark.parametrize(("name", "kwargs", "indices"), CASES)
def test_mmseg_timm_backbone_call_builds_every_family(name, kwargs, indices):
    backbone = MMSegTimmBackbone(name, pretrained=False, out_indices=indices, **kwargs).eval()
    size = kwargs["img_size"]
    outs = backbone(torch.randn(1, 3, size, size))
    info = backbone.timm_model.feature_info
    assert len(outs) == len(info.channels()) == (len(indices) if indices else 4)
    channel_axis = 3 if "swin" in name else 1  # timm's Swin stages are channels-last
    assert [o.shape[channel_axis] for o in outs] == info.channels()
    if "grouped" in name:
        assert _shared_mlps(backbone) > 0


def test_mmseg_call_loads_vitreduce_weights_into_its_wrapper(tmp_path):
    trained, path = _trained("vit_tiny_patch16_224_grouped_mlp", VIT, tmp_path)
    backbone = MMSegTimmBackbone("vit_tiny_patch16_224_grouped_mlp", pretrained=False, out_indices=(1, 3), **VIT)
    assert vitreduce.load_backbone_weights(backbone, path) is backbone  # finds the timm model inside
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = trained.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        got = backbone.eval()(x)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    blocks = backbone.timm_model.model.blocks
    assert blocks[0].mlp is blocks[1].mlp and blocks[2].mlp is blocks[3].mlp


def test_mmseg_defaults_and_in_channels():
    """mmseg's default pretrained=True is refused (no published weights); checkpoint_path='' never reaches
    vitreduce (timm.create_model takes it); in_channels is the patch embedding's input channels."""
    with pytest.raises(vitreduce.VitreduceError, match="no pretrained weights"):
        MMSegTimmBackbone("vit_tiny_patch16_224_grouped_mlp", out_indices=(1, 3), **VIT)
    gray = MMSegTimmBackbone("vit_tiny_patch16_224_grouped_mlp", pretrained=False, in_channels=1, out_indices=1, **VIT)
    assert [tuple(o.shape) for o in gray(torch.zeros(2, 1, 32, 32))] == [(2, 32, 4, 4)]


def test_mmpretrain_timm_backbone_call():
    """mmpretrain 1.2.0's defaults (features_only=False) give the whole model, its classifier reset to tokens."""
    model = timm.create_model(model_name="vit_tiny_patch16_224_grouped_mlp", features_only=False, pretrained=False,
                              in_chans=3, checkpoint_path="", **VIT)
    model.reset_classifier(0, "")
    assert tuple(model(torch.zeros(1, 3, 32, 32)).shape) == (1, 17, 32)  # class token + 16 patch tokens
    backbone = timm.create_model(model_name="vit_tiny_patch16_224_grouped_mlp", features_only=True, pretrained=False,
                                 in_chans=3, checkpoint_path="", out_indices=(1, 3), **VIT)
    assert not hasattr(backbone, "reset_classifier")  # so mmpretrain leaves the feature wrapper as it is
    assert backbone.feature_info.channels() == [32, 32]


def test_hugging_face_timm_backbone(tmp_path):
    from transformers import AutoBackbone, TimmBackbone, TimmBackboneConfig

    config = TimmBackboneConfig(backbone="vit_tiny_patch16_224_grouped_mlp", use_pretrained_backbone=False,
                                out_indices=(1, 3))
    model = TimmBackbone(config, **VIT).eval()  # extra kwargs go to timm.create_model
    assert model.channels == [32, 32]
    trained, path = _trained("vit_tiny_patch16_224_grouped_mlp", VIT, tmp_path)
    vitreduce.load_backbone_weights(model, path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = trained.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        got = model(x).feature_maps
    assert [tuple(g.shape) for g in got] == [(2, 32, 4, 4)] * 2
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    blocks = model._backbone.model.blocks  # transformers keeps timm's model as _backbone
    assert blocks[0].mlp is blocks[1].mlp and blocks[2].mlp is blocks[3].mlp
    swin = AutoBackbone.from_config(TimmBackboneConfig(backbone="swin_tiny_patch4_window7_224_grouped_mlp",
                                                       use_pretrained_backbone=False, out_indices=(0, 1, 2, 3)), **SWIN)
    maps = swin.eval()(torch.zeros(1, 3, 64, 64)).feature_maps
    assert swin.channels == [16, 32, 64, 128]
    assert [tuple(m.shape) for m in maps] == [(1, 16, 16, 16), (1, 8, 8, 32), (1, 4, 4, 64), (1, 2, 2, 128)]  # NHWC
    with pytest.raises(vitreduce.VitreduceError, match="no pretrained weights"):
        TimmBackbone.from_pretrained("vit_tiny_patch16_224_grouped_mlp")


def test_documented_hugging_face_config_line():
    """docs/dense-tasks.md's TimmBackboneConfig line, as written there (a full-size ViT-S/16)."""
    from transformers import TimmBackbone, TimmBackboneConfig

    model = TimmBackbone(TimmBackboneConfig(backbone="vit_small_patch16_224_grouped_mlp",
                                            use_pretrained_backbone=False, out_indices=(3, 5, 7, 11))).eval()
    with torch.no_grad():
        maps = model(torch.zeros(1, 3, 224, 224)).feature_maps
    assert model.channels == [384] * 4 and [tuple(m.shape) for m in maps] == [(1, 384, 14, 14)] * 4


def test_a_module_with_no_or_two_backbones_is_refused(tmp_path):
    _, path = _trained("vit_tiny_patch16_224_grouped_mlp", VIT, tmp_path)
    with pytest.raises(vitreduce.VitreduceError, match="holds no vitreduce feature backbone"):
        vitreduce.load_backbone_weights(nn.Linear(2, 2), path)
    two = nn.ModuleList([MMSegTimmBackbone("vit_tiny_patch16_224_grouped_mlp", pretrained=False, **VIT)
                         for _ in range(2)])
    with pytest.raises(vitreduce.VitreduceError, match="holds 2 vitreduce feature backbones"):
        vitreduce.load_backbone_weights(two, path)


def test_swin_maps_for_mmseg_heads_are_nchw_with_the_getter(tmp_path):
    """mmseg's and mmdet's heads take NCHW maps; timm's Swin stage list gives NHWC and ignores output_fmt, so
    output_fmt='NCHW' alone is refused and feature_cls='getter' gives NCHW maps (loadable, sharing kept)."""
    name = "swin_tiny_patch4_window7_224_grouped_mlp"
    with pytest.raises(vitreduce.VitreduceError, match="add feature_cls='getter'"):
        MMSegTimmBackbone(name, pretrained=False, feature_cfg=dict(output_fmt="NCHW"), **SWIN)
    trained, path = _trained(name, SWIN, tmp_path)
    backbone = MMSegTimmBackbone(name, pretrained=False, feature_cfg=dict(feature_cls="getter"), **SWIN)
    vitreduce.load_backbone_weights(backbone, path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = trained.forward_intermediates(x, intermediates_only=True)
        got = backbone.eval()(x)
    assert [o.shape[1] for o in got] == backbone.timm_model.feature_info.channels() == [16, 32, 64, 128]
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    layer = backbone.timm_model.model.layers[0]
    assert layer.blocks[0].mlp is layer.blocks[1].mlp
