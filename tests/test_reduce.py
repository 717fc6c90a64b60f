"""Reductions preserve what they should, follow the published rule, and treat sharing right."""
from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
from conftest import TINY_VIT, tiny_model

import vitreduce
from vitreduce.errors import VitreduceError
from vitreduce.reduction.surgery import group_assignment, unique_mlps


def test_shallow_ratio_one_and_grouped_size_one_leave_outputs_unchanged(images):
    reference = tiny_model()(images)
    assert torch.equal(tiny_model("shallow:ratio=1.0")(images), reference)
    assert torch.equal(tiny_model("grouped:size=1")(images), reference)


@pytest.mark.parametrize("keep", ["first", "magnitude", "random"])
def test_sliced_model_equals_full_model_with_dropped_units_zeroed(images, keep):
    full = tiny_model()
    sliced = vitreduce.reduce(tiny_model(), f"shallow:ratio=0.5,keep={keep},seed=7")
    with torch.no_grad():
        for block_full, block_sliced in zip(full.blocks, sliced.blocks, strict=True):
            fc1_full, fc1_kept = block_full.mlp.fc1.weight, block_sliced.mlp.fc1.weight
            # A kept unit is the full fc1 row it came from; zero every fc2 column not kept.
            kept = [int(torch.nonzero((fc1_full == row).all(dim=1))[0]) for row in fc1_kept]
            assert len(set(kept)) == fc1_kept.shape[0] == 64
            dropped = sorted(set(range(fc1_full.shape[0])) - set(kept))
            block_full.mlp.fc2.weight[:, dropped] = 0
    torch.testing.assert_close(sliced(images), full(images), rtol=1e-5, atol=1e-6)


def test_shallow_keeps_exactly_the_first_units_and_fc2_bias():
    full, sliced = tiny_model(), tiny_model("shallow")
    for a, b in zip(full.blocks, sliced.blocks, strict=True):
        assert torch.equal(b.mlp.fc1.weight, a.mlp.fc1.weight[:64])
        assert torch.equal(b.mlp.fc1.bias, a.mlp.fc1.bias[:64])
        assert torch.equal(b.mlp.fc2.weight, a.mlp.fc2.weight[:, :64])
        assert torch.equal(b.mlp.fc2.bias, a.mlp.fc2.bias)


def test_magnitude_keeps_the_largest_units():
    model = tiny_model()
    mlp = model.blocks[0].mlp
    score = mlp.fc1.weight.norm(dim=1) * mlp.fc2.weight.norm(dim=0)
    expected = torch.topk(score, 32).indices.sort().values
    reduced = vitreduce.reduce(tiny_model(), "shallow:ratio=0.25,keep=magnitude")
    assert torch.equal(reduced.blocks[0].mlp.fc1.weight, mlp.fc1.weight[expected])


def test_grouped_follows_the_published_rule():
    full, grouped = tiny_model(), tiny_model("grouped")
    scale = 1 / math.sqrt(2)
    for group in range(2):
        kept, source = grouped.blocks[2 * group].mlp, full.blocks[2 * group].mlp
        assert grouped.blocks[2 * group + 1].mlp is kept
        torch.testing.assert_close(kept.fc1.weight, source.fc1.weight * scale, rtol=0, atol=0)
        torch.testing.assert_close(kept.fc1.bias, source.fc1.bias * scale, rtol=0, atol=0)
        torch.testing.assert_close(kept.fc2.weight, source.fc2.weight * scale, rtol=0, atol=0)
        assert torch.equal(kept.fc2.bias, source.fc2.bias)  # fc2.bias is not scaled


def test_grouped_scale_one_on_identical_mlps_leaves_outputs_unchanged(images):
    model = tiny_model()
    with torch.no_grad():  # make blocks (0,1) and (2,3) already hold identical MLPs
        for first, second in ((0, 1), (2, 3)):
            model.blocks[second].mlp.load_state_dict(model.blocks[first].mlp.state_dict())
    reference = model(images)
    for init in ("first", "mean"):
        reduced = vitreduce.reduce(_copy(model), f"grouped:scale=1.0,init={init}")
        assert len(unique_mlps(reduced)) == 2
        torch.testing.assert_close(reduced(images), reference, rtol=1e-6, atol=1e-6)


def _copy(model):
    return copy.deepcopy(model)


def test_grouped_mean_averages_the_group():
    full, grouped = tiny_model(), tiny_model("grouped:init=mean,scale=1.0")
    expected = (full.blocks[0].mlp.fc1.weight + full.blocks[1].mlp.fc1.weight) / 2
    torch.testing.assert_close(grouped.blocks[0].mlp.fc1.weight, expected)


def test_shared_gradient_is_the_sum_of_its_uses(images):
    grouped = tiny_model("grouped")
    untied = tiny_model("grouped")
    for first, second in ((0, 1), (2, 3)):  # untie: give block `second` its own copy of the MLP
        untied.blocks[second].mlp = _copy(untied.blocks[first].mlp)
    grouped(images).square().sum().backward()
    untied(images).square().sum().backward()
    for first, second in ((0, 1), (2, 3)):
        expected = untied.blocks[first].mlp.fc1.weight.grad + untied.blocks[second].mlp.fc1.weight.grad
        torch.testing.assert_close(grouped.blocks[first].mlp.fc1.weight.grad, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("depth", "size", "pattern", "expected"),
    [
        (12, 2, "sequence", [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]),
        (5, 2, "sequence", [0, 0, 1, 1, 2]),  # smaller last group
        (6, 2, "cycle", [0, 1, 2, 0, 1, 2]),
        (12, 12, "sequence", [0] * 12),
    ],
)
def test_group_assignment(depth, size, pattern, expected):
    assert group_assignment(depth, size, pattern) == expected


def test_cycle_and_uneven_groups_scale_by_group_size():
    full = tiny_model(depth=5)
    grouped = tiny_model("grouped:size=2", depth=5)
    assert len(unique_mlps(grouped)) == 3
    torch.testing.assert_close(grouped.blocks[4].mlp.fc1.weight, full.blocks[4].mlp.fc1.weight)  # alone: scale 1
    cycled = tiny_model("grouped:pattern=cycle", depth=4)
    assert cycled.blocks[0].mlp is cycled.blocks[2].mlp and cycled.blocks[1].mlp is cycled.blocks[3].mlp


def test_grouped_then_shallow_slices_each_shared_mlp_once():
    model = tiny_model("grouped+shallow")
    mlps = unique_mlps(model)
    assert len(mlps) == 2 and all(m.fc1.out_features == 64 for _, m in mlps)


@pytest.mark.parametrize("weight_init", ["", "jax"])
def test_thin_has_fresh_width_statistics_and_shallow_full_width_ones(weight_init):
    # Width matters only for xavier (jax) init: std = sqrt(2 / (fan_in + fan_out)).
    kwargs = dict(img_size=16, patch_size=4, embed_dim=256, depth=2, num_heads=4, num_classes=5,
                  weight_init=weight_init)
    shallow = vitreduce.create_model("vit_tiny_patch16_224", reduction="shallow", **kwargs)
    thin = vitreduce.create_model("vit_tiny_patch16_224", reduction="thin", **kwargs)
    full_std = math.sqrt(2 / (256 + 1024)) if weight_init == "jax" else 0.02
    fresh_std = math.sqrt(2 / (256 + 512)) if weight_init == "jax" else 0.02
    for block_s, block_t in zip(shallow.blocks, thin.blocks, strict=True):
        assert block_t.mlp.fc1.out_features == block_s.mlp.fc1.out_features == 512
        assert block_s.mlp.fc1.weight.std().item() == pytest.approx(full_std, rel=0.05)
        assert block_t.mlp.fc1.weight.std().item() == pytest.approx(fresh_std, rel=0.05)


def test_thin_respects_fix_init():
    kwargs = dict(TINY_VIT, embed_dim=256, num_heads=4, depth=2)
    torch.manual_seed(0)
    plain = vitreduce.create_model("vit_tiny_patch16_224", reduction="thin", **kwargs)
    torch.manual_seed(0)
    fixed = vitreduce.create_model("vit_tiny_patch16_224", reduction="thin", fix_init=True, **kwargs)
    ratio = plain.blocks[1].mlp.fc2.weight.std() / fixed.blocks[1].mlp.fc2.weight.std()
    assert ratio.item() == pytest.approx(math.sqrt(2 * 2), rel=0.1)  # layer id 2


def test_bad_inputs_are_refused_clearly():
    with pytest.raises(VitreduceError, match="exceeds the model depth 4"):
        tiny_model("grouped:size=5")
    with pytest.raises(VitreduceError, match="no ViT blocks"):
        vitreduce.reduce(torch.nn.Linear(2, 2), "grouped")
    with pytest.raises(VitreduceError, match="would repeat"):
        vitreduce.reduce(tiny_model("grouped"), "grouped")
    odd = timm.create_model("vit_tiny_patch16_224", **TINY_VIT)
    odd.blocks[1].mlp = torch.nn.Sequential(torch.nn.Linear(TINY_VIT["embed_dim"], TINY_VIT["embed_dim"]))
    with pytest.raises(VitreduceError, match="blocks.1 is a Sequential, which vitreduce cannot reduce"):
        vitreduce.reduce(odd, "shallow")


def test_registered_variants_build_through_timm():
    for name, unique in (("vit_base_patch16_224_grouped_mlp", 6), ("vit_base_patch16_224_shallow_mlp", 12),
                         ("vit_base_patch16_224_thin_mlp", 12)):
        model = timm.create_model(name, num_classes=10, device="meta")
        assert len(unique_mlps(model)) == unique and model.num_classes == 10


def _pooled_std(model, tensor_name: str) -> float:
    """Std over the shared MLPs' tensors of one name (every group pooled: a steadier estimate)."""
    values = [dict(mlp.named_parameters())[tensor_name].flatten() for _, mlp in unique_mlps(model)]
    return torch.cat(values).std().item()


def _wide_model(reduction: str, depth: int, **kwargs):
    torch.manual_seed(0)
    return vitreduce.create_model("vit_tiny_patch16_224", reduction=reduction, **{
        **TINY_VIT, "embed_dim": 256, "num_heads": 4, "depth": depth, **kwargs})


@pytest.mark.parametrize("n", [2, 3, 4])
def test_grouped_auto_gives_first_and_mean_the_same_init_std(n):
    # timm's default init: weights trunc-normal std 0.02 (biases zero). 2 groups of n blocks, width 256
    # (fc1.weight: 2 x 1024 x 256 values, so the std estimate is good to about 0.1%).
    for init in ("first", "mean"):
        model = _wide_model(f"grouped:size={n},init={init}", depth=2 * n)
        for name in ("fc1.weight", "fc2.weight"):
            assert _pooled_std(model, name) == pytest.approx(0.02 / math.sqrt(n), rel=0.02), (init, name)
    # jax init also draws the MLP biases (normal, std 1e-6), so all four tensors can be compared.
    base = _wide_model("none", depth=2 * n, weight_init="jax")
    first = _wide_model(f"grouped:size={n}", depth=2 * n, weight_init="jax")
    mean = _wide_model(f"grouped:size={n},init=mean", depth=2 * n, weight_init="jax")
    for name, factor, rel in (("fc1.weight", n ** -0.5, 0.02), ("fc2.weight", n ** -0.5, 0.02),
                              ("fc1.bias", n ** -0.5, 0.1), ("fc2.bias", 1.0, 0.2)):
        expected = _pooled_std(base, name) * factor
        assert _pooled_std(first, name) == pytest.approx(expected, rel=rel), ("first", name)
        assert _pooled_std(mean, name) == pytest.approx(expected, rel=rel), ("mean", name)


def test_grouped_mean_auto_is_the_plain_mean_with_fc2_bias_times_sqrt_n():
    full = tiny_model(weight_init="jax")
    grouped = tiny_model("grouped:init=mean", weight_init="jax")
    kept, pair = grouped.blocks[0].mlp, (full.blocks[0].mlp, full.blocks[1].mlp)
    for name, factor in (("fc1.weight", 1.0), ("fc1.bias", 1.0), ("fc2.weight", 1.0), ("fc2.bias", math.sqrt(2))):
        mean = torch.stack([dict(m.named_parameters())[name] for m in pair]).mean(dim=0)
        torch.testing.assert_close(dict(kept.named_parameters())[name], mean * factor)


def test_grouped_and_thin_build_the_same_model_in_either_order():
    a, b = tiny_model("grouped+thin"), tiny_model("thin+grouped")
    assert vitreduce.describe(a).reduction == vitreduce.describe(b).reduction == "thin:ratio=0.5+grouped"
    assert a.state_dict().keys() == b.state_dict().keys()
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    # ... and both keep the 1/sqrt(2) rule on the fresh MLPs (thin draws the same values either way).
    thin = tiny_model("thin")
    for mlp_a, mlp_thin in ((a.blocks[0].mlp, thin.blocks[0].mlp), (a.blocks[2].mlp, thin.blocks[2].mlp)):
        assert torch.equal(mlp_a.fc1.weight, mlp_thin.fc1.weight * (1 / math.sqrt(2)))
        assert torch.equal(mlp_a.fc2.weight, mlp_thin.fc2.weight * (1 / math.sqrt(2)))


def test_thin_after_grouped_in_a_second_call_is_refused_with_the_spec_to_use():
    with pytest.raises(VitreduceError, match=r"reduce the unreduced model with 'thin:ratio=0.5\+grouped'"):
        vitreduce.reduce(tiny_model("grouped"), "thin")


@pytest.mark.parametrize("weight_init", ["skip", "reset"])
def test_thin_under_skip_keeps_pytorchs_default_linear_init(weight_init):
    thin = _wide_model("thin", depth=2, weight_init=weight_init, fix_init=weight_init == "skip")
    fresh_fc1, fresh_fc2 = torch.nn.Linear(256, 512), torch.nn.Linear(512, 256)  # what timm's skip leaves
    for block in thin.blocks:  # 131,072 values each: sampling error about 0.2%
        assert block.mlp.fc1.weight.std().item() == pytest.approx(fresh_fc1.weight.std().item(), rel=0.02)
        # timm runs no init under skip, so no fix_init either: fc2 is not divided by sqrt(2 * layer).
        assert block.mlp.fc2.weight.std().item() == pytest.approx(fresh_fc2.weight.std().item(), rel=0.02)
    assert fresh_fc1.weight.std().item() == pytest.approx(1 / math.sqrt(3 * 256), rel=0.02)  # not 0.02
