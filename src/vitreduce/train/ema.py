"""Exponential moving average of a model's weights, one update per unique tensor.

Why not timm's ModelEmaV2/V3: they walk ``state_dict()``, which lists a shared tensor once per alias,
so with MLPs shared by two blocks the shared weights are blended twice per step and decay as d**2
(0.9998 behaves as 0.9996; with d = 0.9 a shared weight moves 0.19 of the way instead of 0.10).
This EMA walks unique parameters and buffers instead (``vitreduce.reduction.params``); tests/test_engine.py
shows both behaviours.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from vitreduce.reduction.params import unique_named_parameters


def unique_named_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(first name, tensor) for each distinct parameter and buffer, parameters first."""
    seen: set[int] = set()
    named = []
    for name, tensor in unique_named_parameters(model) + list(model.named_buffers(remove_duplicate=False)):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            named.append((name, tensor))
    return named


class Ema:
    """A frozen copy of a model whose weights track ``decay * ema + (1 - decay) * weights``.

    Args:
        model: the trained model (unwrapped: not the DDP or compiled wrapper). The copy keeps its
            sharing, since ``copy.deepcopy`` copies a module used twice once.
        decay: weight of the old average per update (the paper: 0.9998 per optimizer step).
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        source, target = unique_named_tensors(model), unique_named_tensors(self.module)
        assert [n for n, _ in source] == [n for n, _ in target], "deepcopy changed the tensor layout"
        self.names = [name for name, _ in target]
        pairs = list(zip((t for _, t in source), (t for _, t in target), strict=True))
        self._float = [(s, t) for s, t in pairs if t.is_floating_point()]
        self._other = [(s, t) for s, t in pairs if not t.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        """Blend the tracked model's current weights in once (each shared tensor once)."""
        if self._float:
            targets, sources = [t for _, t in self._float], [s.detach() for s, _ in self._float]
            torch._foreach_lerp_(targets, sources, 1.0 - self.decay)  # ema += (1 - d) * (w - ema)
        for source, target in self._other:
            target.copy_(source)

    def tensors(self) -> dict[str, torch.Tensor]:
        """{first name: tensor} of the average (for training-state checkpoints)."""
        return dict(unique_named_tensors(self.module))
