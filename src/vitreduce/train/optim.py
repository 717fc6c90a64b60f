"""Optimizer and LR schedule: timm's factories, fed with parameter groups over unique tensors.

The groups follow timm's ``param_groups_weight_decay``: no weight decay on 1-D tensors (biases,
norms), on ``*.bias`` and on ``model.no_weight_decay()`` (pos_embed, cls_token, ...). They are built
from ``unique_named_parameters`` so a shared tensor is in exactly one group, once.
"""
from __future__ import annotations

from fnmatch import fnmatch

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

from vitreduce.config_tree import kwargs_from
from vitreduce.reduction.params import unique_named_parameters
from vitreduce.train.config import OptimizerConfig, ScheduleConfig


def param_groups(model: nn.Module, weight_decay: float, no_weight_decay: list[str] = ()) -> list[dict]:
    """[no-decay group, decay group] (empty ones left out) over the model's unique trainable parameters.

    Args:
        model: the (unwrapped) model.
        weight_decay: decay of the decayed group.
        no_weight_decay: extra fnmatch patterns of parameter names left undecayed.
    """
    skip = set(no_weight_decay)
    if hasattr(model, "no_weight_decay"):
        skip |= set(model.no_weight_decay())
    decay, no_decay = [], []
    for name, param in unique_named_parameters(model, trainable_only=True):
        excluded = param.ndim <= 1 or name.endswith(".bias") or any(fnmatch(name, p) for p in skip)
        (no_decay if excluded or not weight_decay else decay).append(param)
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
    return [group for group in groups if group["params"]]


def param_names(model: nn.Module) -> dict[int, str]:
    """{id(parameter): first name}: how training states key optimizer state (by name, never by index)."""
    return {id(param): name for name, param in unique_named_parameters(model)}


def create_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2`` over ``param_groups(model)``.

    Args:
        model: the (unwrapped) model.
        cfg: the optimizer section of the config.
    """
    extra = {}
    if cfg.betas is not None:
        extra["betas"] = tuple(cfg.betas)
    if cfg.eps is not None:
        extra["eps"] = cfg.eps
    groups = param_groups(model, cfg.weight_decay, cfg.no_weight_decay)
    return create_optimizer_v2(
        groups, opt=cfg.name, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum, **extra
    )


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, epochs: int, updates_per_epoch: int):
    """timm's ``create_scheduler_v2`` with the schedule section (its defaults are timm train.py's).

    Args:
        optimizer: the optimizer whose group LRs it sets.
        cfg: the schedule section of the config.
        epochs: training epochs.
        updates_per_epoch: optimizer steps per epoch (for ``on_updates`` schedules).
    """
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.name,
        num_epochs=epochs,
        step_on_epochs=not cfg.on_updates,
        updates_per_epoch=updates_per_epoch,
        **kwargs_from(cfg, "decay_epochs", "decay_milestones", "cooldown_epochs", "decay_rate", "min_lr", "warmup_lr",
                      "warmup_epochs"),
    )
    return scheduler

