"""What a profile runs with: the settings every variant shares and the variants to compare, both
checked before any work starts, each refusal naming the option to change."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from vitreduce.device import PRECISIONS, Precision, resolve_device
from vitreduce.efficiency.memory import MemoryJob, available_ram_bytes, estimate_activation_bytes
from vitreduce.efficiency.workload import STEP_KINDS, StepKind
from vitreduce.errors import VitreduceError
from vitreduce.reduction.spec import ReductionSpec

Mode = Literal["infer", "train", "both"]
MODES: tuple[Mode, ...] = ("infer", "train", "both")
DEFAULT_REDUCTIONS = ("none", "grouped", "shallow")
_RAM_SAFETY = 1.25  # allocator slack and temporaries on top of the estimate


@dataclass(frozen=True)
class ProfileSettings:
    """The settings one profile applies to every variant; made by ``check_settings``, so already valid.

    Args:
        model_name: timm base model.
        model_kwargs: timm kwargs for every variant, ``num_classes`` (and ``img_size`` if given) included.
        device: where the variants run.
        precision: 'fp32', or 'bf16'/'fp16' through autocast.
        batch_size: images per timed batch or step.
        modes: the steps to time and measure, in order.
        compile: wrap each model in ``torch.compile``.
        repeats: timed runs per variant and step.
        warmup: untimed runs per variant and step before timing.
        threads: torch's CPU threads (reported, and used by the memory subprocesses).
    """

    model_name: str
    model_kwargs: dict[str, Any]
    device: torch.device
    precision: Precision
    batch_size: int
    modes: tuple[StepKind, ...]
    compile: bool
    repeats: int
    warmup: int
    threads: int

    def memory_job(self, spec: ReductionSpec) -> MemoryJob:
        """The JSON-safe description of one variant's peak-memory measurement."""
        return {"model_name": self.model_name, "model_kwargs": self.model_kwargs, "reduction": str(spec),
                "device": str(self.device), "precision": self.precision, "batch_size": self.batch_size,
                "modes": list(self.modes), "compile": self.compile, "threads": self.threads}


def check_settings(model_name: str, *, device: str, precision: Precision, batch_size: int, mode: Mode,
                   compile: bool, repeats: int, warmup: int, img_size: int | None, num_classes: int,
                   model_kwargs: dict[str, Any] | None) -> ProfileSettings:
    """Refuse bad settings before any work; the arguments are ``profile_variants``'s."""
    target = _check_device_and_precision(device, precision)
    _check_counts(batch_size, repeats, warmup, compile)
    if mode not in MODES:
        raise VitreduceError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    modes = STEP_KINDS if mode == "both" else (mode,)
    if "train" in modes and num_classes < 1:
        raise VitreduceError("training needs a classifier: use num_classes >= 1 or --mode infer")
    kwargs = {**(model_kwargs or {}), "num_classes": num_classes}
    if img_size is not None:
        if img_size < 1:
            raise VitreduceError(f"--img-size must be a positive number of pixels, got {img_size}")
        kwargs["img_size"] = img_size
    return ProfileSettings(model_name=model_name, model_kwargs=kwargs, device=target, precision=precision,
                           batch_size=batch_size, modes=modes, compile=compile, repeats=repeats, warmup=warmup,
                           threads=torch.get_num_threads())


def _check_device_and_precision(device: str, precision: Precision) -> torch.device:
    target = resolve_device(device, option="--device")
    if precision not in PRECISIONS:
        raise VitreduceError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and target.type == "cpu":
        raise VitreduceError("fp16 is only supported on cuda (CPU autocast is bf16); use --precision bf16 or fp32")
    if precision == "bf16" and target.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise VitreduceError("this GPU does not support bf16; use --precision fp16 or fp32")
    return target


def _check_counts(batch_size: int, repeats: int, warmup: int, compile: bool) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise VitreduceError(f"batch size must be a positive integer, got {batch_size!r}; use --batch-size N >= 1")
    if repeats < 1:
        raise VitreduceError(f"repeats must be >= 1, got {repeats}; use --repeats R >= 1")
    if warmup < 0:
        raise VitreduceError(f"warm-up must be >= 0, got {warmup}; use --warmup W >= 0")
    if compile and warmup < 1:
        raise VitreduceError("--compile needs --warmup >= 1: compilation happens during warm-up and is not timed")


def parse_reductions(reductions: Sequence[str | ReductionSpec] | str | ReductionSpec | None) -> list[ReductionSpec]:
    """The variants to profile, each once (default: none, grouped, shallow); the first is the reference."""
    if reductions is None:
        reductions = DEFAULT_REDUCTIONS
    if isinstance(reductions, str | ReductionSpec):
        reductions = [reductions]
    specs = [ReductionSpec.parse(r) for r in reductions]
    if not specs:
        raise VitreduceError("no variants to profile; give at least one --reduction")
    names = [str(s) for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise VitreduceError(f"reduction {', '.join(repeated)} given twice; list each variant once")
    return specs


def check_cpu_ram(settings: ProfileSettings, metas: list[nn.Module], statics: list[dict[str, int]]) -> None:
    """Refuse a run whose timing process would not fit in the RAM available now.

    Args:
        settings: the profile's settings.
        metas: every variant, built on the meta device (all are resident at once while timing).
        statics: their ``static_memory``.
    """
    available = available_ram_bytes()
    if available is None:
        return
    train = "train" in settings.modes
    state = sum(s["weights_bytes"] + (s["grads_bytes"] + s["optimizer_bytes"] if train else 0) for s in statics)
    activations = max(estimate_activation_bytes(m, settings.batch_size, train) for m in metas)
    needed = _RAM_SAFETY * (state + activations)
    if needed > available:
        gb = 1e9
        raise VitreduceError(
            f"batch {settings.batch_size} of {settings.model_name} needs about {needed / gb:.1f} GB of RAM "
            f"({len(metas)} variants' {'weights, grads and AdamW state' if train else 'weights'} {state / gb:.1f} GB "
            f"+ activations {activations / gb:.1f} GB, x{_RAM_SAFETY}) but {available / gb:.1f} GB is available; "
            "use a smaller --batch-size, fewer --reduction variants or --mode infer"
        )
