"""The measured workload: the same model, batch and steps run in the timing process and in each
memory subprocess, so throughput and peak memory describe one and the same work.

A step is one inference batch (eval mode, no autograd) or one training step (forward,
cross-entropy, backward, AdamW step over the unique trainable parameters). Weights are random:
speed and memory depend on the architecture, not on the values.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vitreduce.device import Precision, autocast
from vitreduce.errors import VitreduceError
from vitreduce.reduction.models import create_model
from vitreduce.reduction.params import unique_parameters
from vitreduce.reduction.spec import ReductionSpec

StepKind = Literal["infer", "train"]
STEP_KINDS: tuple[StepKind, ...] = ("infer", "train")
_LR = 1e-4  # any small value: the step's cost does not depend on it


def build_model(model_name: str, reduction: str | ReductionSpec, model_kwargs: dict, device: torch.device | str):
    """Build the variant on the CPU (reductions slice a full model) and move it to ``device``."""
    model = create_model(model_name, reduction=reduction, **model_kwargs)
    return model.to(device)


def make_batch(model: nn.Module, batch_size: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images (B, C, H, W) at the model's input size and random labels (B,)."""
    embed = getattr(model, "_orig_mod", model).patch_embed  # through a torch.compile wrapper
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, embed.proj.in_channels, *embed.img_size, generator=generator)
    num_classes = max(1, getattr(model, "num_classes", 1))
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator)
    return images.to(device), labels.to(device)


def infer_step(model: nn.Module, images: torch.Tensor, precision: Precision) -> None:
    """One inference batch: eval mode, no autograd."""
    model.eval()
    with torch.inference_mode(), autocast(precision, images.device):
        model(images)


class TrainStep:
    """One training step: forward, cross-entropy, backward, AdamW step over the unique trainable parameters.

    The AdamW state is allocated at construction (one step over zero gradients) so the first timed
    or measured step is already a steady-state step. fp16 uses a GradScaler, as AMP training does.

    Args:
        model: the variant, already on its device.
        precision: 'fp32', or 'bf16'/'fp16' through autocast (weights stay fp32).
    """

    def __init__(self, model: nn.Module, precision: Precision):
        self.model = model
        self.precision = precision
        params = list(unique_parameters(model, trainable_only=True))
        if not params:
            raise VitreduceError("the model has no trainable parameters; use --mode infer")
        self.optimizer = torch.optim.AdamW(params, lr=_LR)
        self.scaler = torch.amp.GradScaler(params[0].device.type) if precision == "fp16" else None
        for param in params:
            param.grad = torch.zeros_like(param)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.precision, images.device):
            loss = F.cross_entropy(self.model(images), labels)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
