"""The training step and its shared-weight-aware parts: optimizer groups, clipping, EMA, faults, eval."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import tiny_model
from torch import nn

from vitreduce.reduction.params import unique_named_parameters
from vitreduce.train.config import OptimizerConfig
from vitreduce.train.ema import Ema
from vitreduce.train.evaluate import evaluate
from vitreduce.train.optim import create_optimizer, param_groups
from vitreduce.train.step import NonFiniteError, StepContext, train_step


def grouped(seed: int = 0) -> nn.Module:
    """conftest's tiny model at width 16, grouped, in training mode (as built)."""
    return tiny_model("grouped", seed, embed_dim=16).train()


def batch(n: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 5, (n,), generator=g)


def context(model, **kwargs) -> StepContext:
    defaults = dict(loss_fn=nn.CrossEntropyLoss(), optimizer=create_optimizer(model, OptimizerConfig(lr=1e-3)),
                    scaler=torch.amp.GradScaler("cpu", enabled=False), ema=None, precision="fp32",
                    device=torch.device("cpu"))
    return StepContext.build(model, model, **{**defaults, **kwargs})


def shared_fc1(model) -> nn.Parameter:
    assert model.blocks[0].mlp is model.blocks[1].mlp
    return model.blocks[0].mlp.fc1.weight


# ---- optimizer groups ------------------------------------------------------------------------


def test_param_groups_hold_each_shared_tensor_once_with_timm_decay_rules():
    model = grouped()
    groups = param_groups(model, weight_decay=0.05)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(unique_named_parameters(model))
    assert len(list(model.state_dict())) > len(ids)  # the aliases exist but are not in the groups
    names = {id(p): n for n, p in unique_named_parameters(model)}
    no_decay = {names[id(p)] for p in groups[0]["params"]}
    decay = {names[id(p)] for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.0 and groups[1]["weight_decay"] == 0.05
    assert {"pos_embed", "cls_token", "blocks.0.norm1.weight", "blocks.0.mlp.fc1.bias", "head.bias"} <= no_decay
    assert {"blocks.0.mlp.fc1.weight", "blocks.0.attn.qkv.weight", "head.weight"} <= decay
    assert not any(n.startswith("blocks.1.mlp") for n in no_decay | decay)  # block 1 uses block 0's MLP


def test_optimizer_steps_a_shared_tensor_once_per_step():
    model = grouped()
    optimizer = create_optimizer(model, OptimizerConfig(lr=1e-3))
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(unique_named_parameters(model))
    images, targets = batch()
    train_step(context(model, optimizer=optimizer), [(images, targets)])
    assert optimizer.state[shared_fc1(model)]["step"].item() == 1  # one Adam update, not two


# ---- the step ----------------------------------------------------------------------------------


def test_step_matches_a_bare_loop_bitwise():
    model, reference = grouped(), grouped()
    images, targets = batch()
    result = train_step(context(model), [(images, targets)])
    opt = create_optimizer(reference, OptimizerConfig(lr=1e-3))
    loss = nn.CrossEntropyLoss()(reference(images), targets)
    loss.backward()
    opt.step()
    assert result.loss == pytest.approx(loss.item(), rel=1e-6) and not result.skipped
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_accumulation_equals_one_large_batch():
    model, reference = grouped(), grouped()
    images, targets = batch(8)
    # SGD: Adam's first step is about sign(gradient), which amplifies rounding noise in near-zero gradients.
    sgd = OptimizerConfig(name="momentum", lr=0.5, momentum=0.0, betas=None, eps=None)
    micro = [(images[:4], targets[:4]), (images[4:6], targets[4:6]), (images[6:], targets[6:])]
    train_step(context(model, optimizer=create_optimizer(model, sgd)), micro)
    train_step(context(reference, optimizer=create_optimizer(reference, sgd)), [(images, targets)])
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_gradient_norm_counts_a_shared_tensor_once_and_clipping_uses_it():
    model = grouped()
    images, targets = batch()
    probe = copy.deepcopy(model)
    nn.CrossEntropyLoss()(probe(images), targets).backward()
    unique = math.sqrt(sum(p.grad.pow(2).sum().item() for _, p in unique_named_parameters(probe)))
    aliased = math.sqrt(sum(p.grad.pow(2).sum().item() for _, p in probe.named_parameters(remove_duplicate=False)))
    assert aliased > unique * 1.0001  # walking the aliases would count the shared MLP twice
    clip = unique / 4
    ctx = context(model, clip_grad=clip)
    result = train_step(ctx, [(images, targets)])
    assert result.grad_norm == pytest.approx(unique, rel=1e-5)
    clipped = math.sqrt(sum(p.grad.pow(2).sum().item() for p in ctx.params))
    assert clipped == pytest.approx(clip, rel=1e-4)


def test_bf16_autocast_step_on_cpu():
    model = grouped()
    result = train_step(context(model, precision="bf16"), [batch()])
    assert math.isfinite(result.loss) and not result.skipped


# ---- EMA ---------------------------------------------------------------------------------------


def _moved_fraction(ema_update, model, ema_model) -> float:
    """Set every weight to EMA + 1, update once, return how far the shared fc1 weight moved toward it."""
    with torch.no_grad():
        for (_, p), (_, e) in zip(unique_named_parameters(model), unique_named_parameters(ema_model), strict=True):
            p.copy_(e + 1.0)
    before = shared_fc1(ema_model).detach().clone()
    ema_update()
    return (shared_fc1(ema_model) - before).mean().item()


def test_timm_model_ema_v3_updates_a_shared_tensor_twice():
    """The reason vitreduce has its own EMA: timm walks state_dict(), which lists the shared MLP twice."""
    from timm.utils import ModelEmaV3

    model = grouped()
    timm_ema = ModelEmaV3(model, decay=0.9)
    moved = _moved_fraction(lambda: timm_ema.update(model, step=None), model, timm_ema.module)
    assert moved == pytest.approx(0.19, abs=1e-4)  # 1 - 0.9**2: decayed as d**2
    unshared = timm_ema.module.blocks[0].attn.qkv.weight  # an unshared weight moved the right amount
    assert (model.blocks[0].attn.qkv.weight - unshared).mean().item() == pytest.approx(0.9, abs=1e-4)


def test_vitreduce_ema_updates_a_shared_tensor_once():
    model = grouped()
    ema = Ema(model, decay=0.9)
    assert shared_fc1(ema.module) is ema.module.blocks[1].mlp.fc1.weight  # the copy keeps the sharing
    assert _moved_fraction(ema.update, model, ema.module) == pytest.approx(0.1, abs=1e-5)
    for (name, p), e in zip(unique_named_parameters(model), ema.tensors().values(), strict=False):
        torch.testing.assert_close(p - e, torch.full_like(p, 0.9), msg=name)


def test_ema_follows_the_step():
    model = grouped()
    ema = Ema(model, decay=0.5)
    start = copy.deepcopy(ema.module.state_dict())
    train_step(context(model, ema=ema), [batch()])
    for name, value in ema.module.state_dict().items():
        torch.testing.assert_close(value, 0.5 * start[name] + 0.5 * model.state_dict()[name], msg=name)


# ---- faults ------------------------------------------------------------------------------------


class NanLoss(nn.Module):
    def forward(self, logits, targets):
        return nn.functional.cross_entropy(logits, targets) * float("nan")


def _poison_gradient(model):
    return model.head.weight.register_hook(lambda grad: grad * float("inf"))


@pytest.mark.parametrize("fault", ["loss", "gradient"])
def test_nonfinite_halts_before_the_optimizer_step(fault):
    model = grouped()
    ema = Ema(model, decay=0.9)
    before = copy.deepcopy(model.state_dict())
    ctx = context(model, ema=ema, loss_fn=NanLoss() if fault == "loss" else nn.CrossEntropyLoss())
    if fault == "gradient":
        _poison_gradient(model)
    with pytest.raises(NonFiniteError, match=f"non-finite {fault}"):
        train_step(ctx, [batch()])
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
        assert torch.equal(ema.module.state_dict()[name], before[name]), name
    assert not ctx.optimizer.state  # Adam never stepped


def test_nonfinite_skip_leaves_everything_and_training_continues():
    model = grouped()
    ema = Ema(model, decay=0.9)
    before = copy.deepcopy(model.state_dict())
    handle = _poison_gradient(model)
    ctx = context(model, ema=ema, nonfinite="skip")
    result = train_step(ctx, [batch()])
    assert result.skipped and math.isfinite(result.loss) and not math.isfinite(result.grad_norm)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    handle.remove()
    assert not train_step(ctx, [batch()]).skipped
    assert not torch.equal(model.head.weight, before["head.weight"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 GradScaler needs CUDA")
def test_fp16_overflow_is_skipped_by_the_scaler_and_reported():
    model = grouped().cuda()
    handle = _poison_gradient(model)
    ctx = context(model, precision="fp16", scaler=torch.amp.GradScaler("cuda"), device=torch.device("cuda"))
    scale = ctx.scaler.get_scale()
    images, targets = batch()
    result = train_step(ctx, [(images.cuda(), targets.cuda())])
    assert result.skipped and ctx.scaler.get_scale() < scale
    handle.remove()
    assert not train_step(ctx, [(images.cuda(), targets.cuda())]).skipped


# ---- evaluation --------------------------------------------------------------------------------


class FixedLogits(nn.Module):
    """Logits read from the input: image i's logits are images[i, 0, 0, :K]."""

    def forward(self, images):
        return images[:, 0, 0, :6]


def test_evaluate_known_answer():
    logits = torch.tensor([
        [9.0, 8, 7, 6, 5, 4],  # label 0: top-1 hit
        [9.0, 8, 7, 6, 5, 4],  # label 4: top-5 hit only
        [9.0, 8, 7, 6, 5, 4],  # label 5: miss
    ])
    images = torch.zeros(3, 3, 1, 6)
    images[:, 0, 0, :] = logits
    targets = torch.tensor([0, 4, 5])
    loader = [(images[:2], targets[:2], torch.tensor([0, 1])), (images[2:], targets[2:], torch.tensor([2]))]
    result = evaluate(FixedLogits(), loader, "fp32", torch.device("cpu"), keep_predictions=True)
    assert result.top1 == pytest.approx(100 / 3) and result.top5 == pytest.approx(200 / 3)
    expected = nn.functional.cross_entropy(logits, targets).item()
    assert result.loss == pytest.approx(expected, rel=1e-6) and result.count == 3
    assert result.predictions.tolist() == [0, 0, 0] and result.indices.tolist() == [0, 1, 2]
