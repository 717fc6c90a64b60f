"""Where tensors run and in what precision: the one place that turns a user's device and precision
choice into torch objects."""
from __future__ import annotations

import contextlib
from typing import Literal

import torch

from vitreduce.errors import VitreduceError

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(preference: str, option: str = "device") -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cpu', 'cuda' and 'cuda:N' as given, checked.

    Args:
        preference: the user's choice.
        option: how the user set it ('device:' in a config, '--device' on the command line), for errors.
    """
    text = str(preference).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise VitreduceError(f"{option}: unknown device {preference!r}; use auto, cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise VitreduceError(f"{option} {preference!r}, but CUDA is not available: torch {torch.__version__} "
                             f"sees no CUDA GPU; use {option} cpu or auto")
    if index and int(index) >= torch.cuda.device_count():
        raise VitreduceError(f"{option} {preference!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(text)


def autocast(precision: Precision, device: torch.device | str):
    """The forward-pass context for a precision: autocast for bf16/fp16 (weights stay fp32, as in
    mixed-precision training), nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    return torch.autocast(device_type, dtype=_AUTOCAST_DTYPES[precision])


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a clock read after it measures the work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
