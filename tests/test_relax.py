"""Relaxed sharing (grouped:relax=R): full rank gives the trained model back (ViT, Swin, gated MLPs), rank R is
the best rank-R fit of each residual, rank 0 is plain grouped bit for bit, the accounting against a count by
hand, checkpoints, optimizer groups and EMA over unique tensors."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
from conftest import TINY_VIT, tiny_model

import vitreduce
from vitreduce.errors import VitreduceError
from vitreduce.reduction.params import alias_groups, unique_parameters
from vitreduce.reduction.relax import RelaxedLinear
from vitreduce.reduction.spec import ReductionSpec
from vitreduce.reduction.surgery import reduce, unique_mlps
from vitreduce.train.ema import Ema
from vitreduce.train.optim import param_groups

TINY_SWIN = dict(img_size=32, patch_size=4, embed_dim=16, depths=[2, 3, 1], num_heads=[1, 2, 4], window_size=4,
                 num_classes=5)
TINY_EVA = dict(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, num_classes=5)
FULL_RANK = "grouped:init=mean,scale=1.0,relax=1000"  # capped per layer at min(out, in)


def _as_trained(model: torch.nn.Module) -> torch.nn.Module:
    """MLPs that differ block by block and matter to the output, as trained ones do (EVA's init keeps them
    near zero): every MLP weight drawn with std 1/sqrt(fan_in), every bias with std 0.1."""
    with torch.no_grad():
        for block in model.modules():
            for name, tensor in getattr(block, "mlp", torch.nn.Identity()).named_parameters():
                std = tensor.shape[-1] ** -0.5 if tensor.ndim == 2 else 0.1
                tensor.normal_(0.0, std) if "norm" not in name else None
    return model.eval()


def _trained(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return _as_trained(vitreduce.create_model(name, **kwargs))


def _gated_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return _as_trained(timm.create_model("vit_tiny_patch16_224", mlp_layer=timm.layers.SwiGLUPacked,
                                         act_layer=torch.nn.SiLU, **TINY_VIT))


MODELS = {
    "vit": (lambda: _trained("vit_tiny_patch16_224", **TINY_VIT), (2, 3, 16, 16)),
    "swin": (lambda: _trained("swin_tiny_patch4_window7_224", **TINY_SWIN), (2, 3, 32, 32)),
    "eva02_swiglu": (lambda: _trained("eva02_small_patch14_224", **TINY_EVA), (2, 3, 32, 32)),
    "vit_packed_glu": (_gated_vit, (2, 3, 16, 16)),
}


@pytest.mark.parametrize("family", list(MODELS))
@pytest.mark.parametrize("spec", [FULL_RANK, "grouped:relax=1000", "grouped:size=3,pattern=cycle,relax=1000"])
def test_full_rank_reproduces_the_trained_models_logits(family, spec):
    build, shape = MODELS[family]
    full = build()
    images = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    expected = full(images)
    relaxed = reduce(copy.deepcopy(full), spec, trained=True).eval()
    assert any(isinstance(m, RelaxedLinear) for m in relaxed.modules())
    scale = expected.abs().max()  # logits on each family's own scale (EVA's init gives ~1e-4)
    assert (relaxed(images) - expected).abs().max() <= 1e-4 * scale
    plain = reduce(copy.deepcopy(full), spec.replace("relax=1000", "relax=0"), trained=True).eval()
    assert (plain(images) - expected).abs().max() > 1e-2 * scale  # sharing alone changes the function


def test_rank_r_is_the_best_rank_r_fit_of_each_residual():
    """Eckart-Young: the error left is the norm of the residual's singular values beyond R."""
    full = _trained("vit_tiny_patch16_224", **TINY_VIT)
    relaxed = reduce(copy.deepcopy(full), "grouped:init=mean,scale=1.0,relax=3", trained=True)
    for block, original in zip(relaxed.blocks, full.blocks, strict=True):
        for name in ("fc1", "fc2"):
            layer, weight = getattr(block.mlp, name), getattr(original.mlp, name).weight
            assert layer.rank == 3
            residual = weight.double() - layer.weight.double()
            fitted = (layer.delta_up.weight @ layer.delta_down.weight).double()
            tail = torch.linalg.svdvals(residual)[3:].norm()
            torch.testing.assert_close((residual - fitted).norm(), tail, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(layer.bias + layer.bias_delta, getattr(original.mlp, name).bias)


def test_rank_zero_is_todays_grouped_bit_for_bit(images):
    assert str(ReductionSpec.parse("grouped:relax=0")) == "grouped"
    assert str(ReductionSpec.parse("grouped:relax=4")) == "grouped:relax=4"
    plain, zero = tiny_model("grouped"), tiny_model("grouped:relax=0")
    assert torch.equal(plain(images), zero(images))
    for (name, a), (other, b) in zip(plain.state_dict().items(), zero.state_dict().items(), strict=True):
        assert name == other and torch.equal(a, b)
    trained = tiny_model()
    by_hand = reduce(copy.deepcopy(trained), "grouped", trained=True).eval()  # trained: scale=auto is x1
    assert torch.equal(reduce(copy.deepcopy(trained), "grouped:relax=0", trained=True).eval()(images), by_hand(images))


def test_a_fresh_relaxed_model_starts_as_plain_sharing(images):
    """B = 0 (A drawn, so the delta trains); the forward is grouped's, and the deltas get gradients."""
    plain, relaxed = tiny_model("grouped"), tiny_model("grouped:relax=2")
    torch.testing.assert_close(relaxed(images), plain(images), rtol=0, atol=1e-6)
    layer = relaxed.blocks[1].mlp.fc1
    assert torch.count_nonzero(layer.delta_up.weight) == 0 and torch.count_nonzero(layer.delta_down.weight) > 0
    relaxed.train()
    relaxed(images).square().sum().backward()
    assert layer.delta_up.weight.grad.abs().sum() > 0


def test_accounting_matches_a_count_by_hand():
    """depth 4, D = 32, H = 128, groups of 2, rank R per fc1 and fc2 (capped at 32), tokens 16 + 1."""
    d, h, tokens = 32, 128, 17
    full = vitreduce.describe(tiny_model())
    mlp = d * h + h + h * d + d
    for rank, capped in ((3, 3), (1000, 32)):
        relaxed = vitreduce.describe(tiny_model(f"grouped:relax={rank}"))
        per_block = (capped * d + h * capped + h) + (capped * h + d * capped + d)  # A, B, bias offset of each
        assert relaxed.params == full.params - 2 * mlp + 4 * per_block
        assert relaxed.mlp_params == 2 * mlp + 4 * per_block and relaxed.unique_mlps == 2
        delta_macs = 4 * tokens * 2 * capped * (d + h)  # x -> A -> B, in fc1 and fc2 of every block
        assert relaxed.macs_linear == full.macs_linear + delta_macs
        assert relaxed.macs_breakdown["mlp"] == full.macs_breakdown["mlp"] + delta_macs
        assert relaxed.macs_total == full.macs_total + delta_macs
        assert relaxed.reduction == f"grouped:relax={rank}"


def test_checkpoints_keep_the_sharing_and_the_deltas(tmp_path, images):
    model = reduce(tiny_model(), "grouped:init=mean,scale=1.0,relax=2", trained=True)
    loaded = vitreduce.load(vitreduce.save(model, tmp_path / "r.safetensors")).eval()
    assert torch.equal(loaded(images), model(images))
    aliases = alias_groups(loaded)
    assert aliases["blocks.1.mlp.fc1.weight"] == "blocks.0.mlp.fc1.weight"
    assert aliases["blocks.1.mlp.fc1.delta_up.weight"] == "blocks.1.mlp.fc1.delta_up.weight"
    assert loaded.blocks[0].mlp.fc2.weight is loaded.blocks[1].mlp.fc2.weight
    assert loaded.blocks[0].mlp.fc2.delta_down is not loaded.blocks[1].mlp.fc2.delta_down


def test_optimizer_groups_and_ema_see_each_tensor_once():
    model = tiny_model("grouped:relax=2").train()
    unique = list(unique_parameters(model))
    grouped = [p for group in param_groups(model, 0.05) for p in group["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(unique)
    assert sum(p.numel() for p in grouped) == vitreduce.describe(model).params
    ema = Ema(model, 0.5)
    assert ema.module.blocks[0].mlp.fc1.weight is ema.module.blocks[1].mlp.fc1.weight
    assert "blocks.1.mlp.fc1.delta_down.weight" in ema.names and "blocks.1.mlp.fc1.weight" not in ema.names
    with torch.no_grad():
        model.blocks[0].mlp.fc1.weight.add_(1.0)
    before = ema.module.blocks[0].mlp.fc1.weight.clone()
    ema.update()  # blended once: half way, not three quarters
    torch.testing.assert_close(ema.module.blocks[0].mlp.fc1.weight, before + 0.5)
    assert len(unique_mlps(model)) == 2


def test_shallow_after_relaxed_sharing_is_refused():
    with pytest.raises(VitreduceError, match="write shallow first"):
        ReductionSpec.parse("grouped:relax=2+shallow")
    model = tiny_model("grouped:relax=2")
    with pytest.raises(VitreduceError, match="write shallow first"):
        reduce(model, "shallow")
    d = vitreduce.describe(tiny_model("shallow+grouped:relax=2"))
    assert d.mlp_hidden == 64


def test_init_checkpoint_fits_the_deltas_to_the_trained_weights(tmp_path, images):
    """model.init_checkpoint with a relaxed reduction: full model loaded, then the deltas from its residuals."""
    from vitreduce.train.config import ModelConfig
    from vitreduce.train.model import start_model

    trained = _as_trained(tiny_model())
    path = vitreduce.save(trained, tmp_path / "full.safetensors")
    cfg = ModelConfig(name="vit_tiny_patch16_224", reduction=FULL_RANK, init_checkpoint=str(path),
                      **{k: v for k, v in TINY_VIT.items()})
    model, report = start_model(cfg)
    assert report.reduction_applied == "grouped:scale=1.0,init=mean,relax=1000"
    expected = trained(images)
    assert (model.eval()(images) - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_a_relaxed_groups_gradient_norm_covers_every_blocks_delta():
    from vitreduce.train.step import StepProbe

    model = tiny_model("grouped:relax=2")
    probe = StepProbe.build(model)
    assert list(probe.mlps) == ["blocks.0.mlp", "blocks.2.mlp"]
    held = {id(p) for p in probe.mlps["blocks.0.mlp"]}
    for block in model.blocks[:2]:
        assert all(id(p) in held for p in block.mlp.parameters())
    assert len(held) == len({id(p) for b in model.blocks[:2] for p in b.mlp.parameters()})
