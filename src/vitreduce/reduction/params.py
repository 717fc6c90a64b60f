"""Shared weights as a first-class case: every walk over parameters or state goes through here.

A tensor shared by several modules appears once in ``unique_named_parameters`` (under its first
name) and ``alias_groups`` tells which state-dict names refer to the same storage.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


def unique_named_parameters(model: nn.Module, trainable_only: bool = False) -> list[tuple[str, nn.Parameter]]:
    """(first name, parameter) for each distinct parameter tensor, in registration order."""
    seen: set[int] = set()
    result = []
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen or (trainable_only and not param.requires_grad):
            continue
        seen.add(id(param))
        result.append((name, param))
    return result


def unique_parameters(model: nn.Module, trainable_only: bool = False) -> Iterator[nn.Parameter]:
    """Each distinct parameter tensor once."""
    return (param for _, param in unique_named_parameters(model, trainable_only))


def count_unique(tensors) -> int:
    """Number of elements over distinct tensors (a shared tensor counts once)."""
    seen: dict[int, torch.Tensor] = {}
    for tensor in tensors:
        seen.setdefault(id(tensor), tensor)
    return sum(t.numel() for t in seen.values())


def alias_groups(model: nn.Module) -> dict[str, str]:
    """Map every state-dict name of parameters and buffers to the first name of the same tensor
    (itself when unshared). Identity of the Python objects, so it also works on the meta device."""
    first: dict[int, str] = {}
    mapping = {}
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    for name, tensor in named:
        mapping[name] = first.setdefault(id(tensor), name)
    return mapping
