"""Efficiency of reduced variants: throughput, peak memory and the exact static breakdown.

All variants are timed in one process, interleaved: each repeat times every variant once (the
starting variant rotating), so machine drift and background load affect them alike. A timed run
is one batch (inference) or one training step (forward, cross-entropy, backward, AdamW step over
the unique parameters); throughput is the median over repeats, with min and max. Peak memory is
measured per variant in a fresh process (see ``vitreduce.efficiency.memory``). Ratios are against the first
variant. Weights are random: speed does not depend on their values, only on the architecture.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitreduce.efficiency.memory import (
    CPU_METHOD,
    CUDA_METHOD,
    MB,
    available_ram_bytes,
    estimate_activation_bytes,
    measure_peak_memory,
    static_memory,
)
from vitreduce.errors import VitreduceError
from vitreduce.files import atomic_write
from vitreduce.reduction.accounting import count_macs, describe
from vitreduce.reduction.models import create_model
from vitreduce.reduction.params import unique_parameters
from vitreduce.reduction.spec import ReductionSpec, Step

__all__ = ["VariantProfile", "profile_variants", "static_memory", "write_throughput_json", "format_table"]

DEFAULT_REDUCTIONS = ("none", "grouped", "shallow")
PRECISIONS = ("fp32", "bf16", "fp16")
MODES = ("infer", "train", "both")
_RAM_SAFETY = 1.25  # allocator slack and temporaries on top of the estimate
_LR = 1e-4  # any small value: the step's cost does not depend on it


@dataclass(frozen=True)
class VariantProfile:
    """One variant's row. Field names are the JSON keys; None where a mode was not run."""

    model: str
    reduction: str
    device: str
    precision: str
    batch_size: int
    threads: int
    compile: bool
    repeats: int
    warmup: int
    params: int
    mlp_params: int
    unique_mlps: int
    macs_linear_g: float
    macs_total_g: float
    macs_linear: int  # exact, for the ratio (the _g figures are rounded)
    weights_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    infer_img_s: float | None
    infer_img_s_min: float | None
    infer_img_s_max: float | None
    train_img_s: float | None
    train_img_s_min: float | None
    train_img_s_max: float | None
    peak_mem_infer_mb: float | None
    peak_mem_train_mb: float | None
    memory_method: str | None
    params_ratio: float | None = None
    macs_ratio: float | None = None
    infer_ratio: float | None = None
    train_ratio: float | None = None
    peak_mem_infer_ratio: float | None = None
    peak_mem_train_ratio: float | None = None
    static_train_ratio: float | None = None

    @property
    def static_train_bytes(self) -> int:
        return self.weights_bytes + self.grads_bytes + self.optimizer_bytes

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# The workload: the same functions run in the timing process and in the memory subprocesses


def build_model(model_name: str, reduction: str | ReductionSpec, model_kwargs: dict, device: torch.device | str):
    """Build the variant on the CPU (reductions slice a full model) and move it to ``device``."""
    model = create_model(model_name, reduction=reduction, **model_kwargs)
    return model.to(device)


def make_batch(model: nn.Module, batch_size: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images (B, C, H, W) at the model's input size and random labels (B,)."""
    embed = getattr(model, "_orig_mod", model).patch_embed
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, embed.proj.in_channels, *embed.img_size, generator=generator)
    num_classes = max(1, getattr(model, "num_classes", 1))
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator)
    return images.to(device), labels.to(device)


def autocast(device_type: str, precision: str):
    """bf16/fp16 through torch.autocast (weights stay fp32, as in mixed-precision training); fp32 plain."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def infer_step(model: nn.Module, images: torch.Tensor, precision: str) -> None:
    """One inference batch: eval mode, no autograd."""
    model.eval()
    with torch.inference_mode(), autocast(images.device.type, precision):
        model(images)


class TrainStep:
    """One training step: forward, cross-entropy, backward, AdamW step over the unique trainable parameters.

    The AdamW state is allocated at construction (one step over zero gradients) so the first timed
    or measured step is already a steady-state step. fp16 uses a GradScaler, as AMP training does.
    """

    def __init__(self, model: nn.Module, precision: str):
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
        with autocast(images.device.type, self.precision):
            loss = F.cross_entropy(self.model(images), labels)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()


# --------------------------------------------------------------------------------------------------
# Settings


def check_settings(device: str, precision: str, batch_size: int, mode: str, repeats: int, warmup: int,
                   compile: bool) -> tuple[torch.device, list[str]]:
    """Refuse bad settings before any work; returns the device and the modes to run."""
    text = str(device).strip().lower()
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise VitreduceError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise VitreduceError(
                f"device {device!r} requested but CUDA is not available to this torch ({torch.__version__}); "
                "use --device cpu"
            )
        if index and int(index) >= torch.cuda.device_count():
            raise VitreduceError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    if precision not in PRECISIONS:
        raise VitreduceError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and kind == "cpu":
        raise VitreduceError("fp16 is only supported on cuda (CPU autocast is bf16); use --precision bf16 or fp32")
    if precision == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise VitreduceError("this GPU does not support bf16; use --precision fp16 or fp32")
    if mode not in MODES:
        raise VitreduceError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise VitreduceError(f"batch size must be a positive integer, got {batch_size!r}; use --batch-size N >= 1")
    if repeats < 1:
        raise VitreduceError(f"repeats must be >= 1, got {repeats}; use --repeats R >= 1")
    if warmup < 0:
        raise VitreduceError(f"warm-up must be >= 0, got {warmup}; use --warmup W >= 0")
    if compile and warmup < 1:
        raise VitreduceError("--compile needs --warmup >= 1: compilation happens during warm-up and is not timed")
    modes = ["infer", "train"] if mode == "both" else [mode]
    return torch.device(text), modes


def _shape_spec(spec: ReductionSpec) -> ReductionSpec:
    """Same shapes, buildable on the meta device (which units a shallow step keeps does not change shapes)."""
    return ReductionSpec(tuple(
        Step(s.strategy, {**s.params, "keep": "first"}) if s.params.get("keep") == "magnitude" else s
        for s in spec.steps
    ))


def _parse_reductions(reductions: Sequence[str | ReductionSpec] | None) -> list[ReductionSpec]:
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


def _check_cpu_ram(model_name: str, metas: list[nn.Module], statics: list[dict], modes: list[str],
                   batch_size: int) -> None:
    """Refuse a run whose timing process would not fit in the RAM available now."""
    available = available_ram_bytes()
    if available is None:
        return
    train = "train" in modes
    state = sum(s["weights_bytes"] + (s["grads_bytes"] + s["optimizer_bytes"] if train else 0) for s in statics)
    activations = max(estimate_activation_bytes(m, batch_size, train) for m in metas)
    needed = _RAM_SAFETY * (state + activations)
    if needed > available:
        gb = 1e9
        raise VitreduceError(
            f"batch {batch_size} of {model_name} needs about {needed / gb:.1f} GB of RAM ({len(metas)} variants' "
            f"{'weights, grads and AdamW state' if train else 'weights'} {state / gb:.1f} GB + activations "
            f"{activations / gb:.1f} GB, x{_RAM_SAFETY}) but {available / gb:.1f} GB is available; "
            "use a smaller --batch-size, fewer --reduction variants or --mode infer"
        )


# --------------------------------------------------------------------------------------------------
# Profiling


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(run: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    run()
    _sync(device)
    return time.perf_counter() - start


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return value / reference


def profile_variants(
    model_name: str,
    reductions: Sequence[str | ReductionSpec] | None = None,
    *,
    device: str = "cpu",
    precision: str = "fp32",
    batch_size: int = 32,
    mode: str = "both",
    compile: bool = False,
    repeats: int = 5,
    warmup: int = 2,
    img_size: int | None = None,
    num_classes: int = 1000,
    model_kwargs: dict[str, Any] | None = None,
    memory: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[VariantProfile]:
    """Profile variants of one model in one process, interleaved; ratios are against the first variant.

    Args:
        model_name: timm base model, e.g. ``vit_base_patch16_224``.
        reductions: reduction specs, the first being the reference for the ratios (default: none,
            grouped, shallow).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``fp32``, ``bf16`` (autocast, cpu and cuda) or ``fp16`` (autocast + GradScaler, cuda only).
        batch_size: images per timed batch or step.
        mode: ``infer``, ``train`` or ``both``.
        compile: wrap each model in ``torch.compile`` (compilation happens in warm-up, not timed).
        repeats: timed runs per variant and mode (median, min, max are reported).
        warmup: untimed runs per variant and mode before timing.
        img_size: input size (square) passed to timm; default the model's own.
        num_classes: classifier outputs passed to timm.
        model_kwargs: further timm kwargs (e.g. ``patch_size``, ``depth``).
        memory: measure peak memory in one fresh subprocess per variant (else reported as None).
        progress: called with a line of text as the work advances.
    """
    say = progress or (lambda _line: None)
    dev, modes = check_settings(device, precision, batch_size, mode, repeats, warmup, compile)
    specs = _parse_reductions(reductions)
    kwargs = {**(model_kwargs or {}), "num_classes": num_classes}
    if img_size is not None:
        kwargs["img_size"] = img_size
    if "train" in modes and num_classes < 1:
        raise VitreduceError("training needs a classifier: use num_classes >= 1 or --mode infer")

    # Accounting and the RAM check on the meta device: no memory, no arithmetic.
    metas = [create_model(model_name, reduction=_shape_spec(s), device="meta", **kwargs) for s in specs]
    descriptions = [describe(m) for m in metas]
    statics = [static_memory(m) for m in metas]
    macs = [count_macs(m)[0] for m in metas]
    if dev.type == "cpu":
        _check_cpu_ram(model_name, metas, statics, modes, batch_size)
    del metas
    threads = torch.get_num_threads()

    peaks: list[dict[str, Any]] = [{"infer_bytes": None, "train_bytes": None, "method": None} for _ in specs]
    if memory:
        for index, spec in enumerate(specs):
            say(f"memory: {spec} ({index + 1}/{len(specs)}, fresh process)")
            peaks[index] = measure_peak_memory({
                "model_name": model_name, "model_kwargs": kwargs, "reduction": str(spec), "device": str(dev),
                "precision": precision, "batch_size": batch_size, "modes": modes, "compile": compile,
                "threads": threads,
            })

    try:
        times = _time_variants(model_name, specs, kwargs, dev, precision, batch_size, modes, compile, repeats,
                               warmup, say)
    except torch.OutOfMemoryError:
        raise VitreduceError(
            f"batch {batch_size} of {len(specs)} variants of {model_name} does not fit on {dev}; use a smaller "
            "--batch-size or fewer --reduction variants (all variants are resident at once while timing)"
        ) from None

    profiles = []
    for spec, desc, linear, static, peak, timing in zip(specs, descriptions, macs, statics, peaks, times, strict=True):
        profiles.append(VariantProfile(
            model=model_name, reduction=str(spec), device=str(dev), precision=precision, batch_size=batch_size,
            threads=threads, compile=compile, repeats=repeats, warmup=warmup,
            params=desc.params, mlp_params=desc.mlp_params, unique_mlps=desc.unique_mlps,
            macs_linear_g=desc.macs_linear_g, macs_total_g=desc.macs_total_g, macs_linear=linear, **static, **timing,
            peak_mem_infer_mb=None if peak["infer_bytes"] is None else round(peak["infer_bytes"] / MB, 3),
            peak_mem_train_mb=None if peak["train_bytes"] is None else round(peak["train_bytes"] / MB, 3),
            memory_method=peak["method"],
        ))
    return _with_ratios(profiles)


def _time_variants(model_name, specs, kwargs, dev, precision, batch_size, modes, compile, repeats, warmup, say):
    """{infer,train}_img_s{,_min,_max} per variant, timed round-robin."""
    with _room_for_graphs(2 * len(specs)) if compile else contextlib.nullcontext():
        runs = _build_runs(model_name, specs, kwargs, dev, precision, batch_size, modes, compile, say)
        for index, spec in enumerate(specs):
            for mode in modes:
                for _ in range(warmup):
                    runs[index][mode]()
            if warmup:
                say(f"timing: warmed up {spec}")
        seconds: list[dict[str, list[float]]] = [{mode: [] for mode in modes} for _ in specs]
        for repeat in range(repeats):
            for offset in range(len(specs)):
                index = (repeat + offset) % len(specs)  # rotate which variant goes first
                for mode in modes:
                    seconds[index][mode].append(_time(runs[index][mode], dev))
            say(f"timing: repeat {repeat + 1}/{repeats} done")
    results = []
    for per_mode in seconds:
        row: dict[str, float | None] = {}
        for mode in ("infer", "train"):
            rates = [batch_size / s for s in per_mode.get(mode, [])]
            row[f"{mode}_img_s"] = round(statistics.median(rates), 3) if rates else None
            row[f"{mode}_img_s_min"] = round(min(rates), 3) if rates else None
            row[f"{mode}_img_s_max"] = round(max(rates), 3) if rates else None
        results.append(row)
    return results


def _room_for_graphs(graphs: int):
    """The variants' compiled graphs (one per variant and mode) share one forward's code: let dynamo keep
    them all; past its recompile limit it would silently run the rest eagerly."""
    from torch._dynamo import config as dynamo_config

    return dynamo_config.patch(recompile_limit=max(dynamo_config.recompile_limit, graphs + 2))


def _build_runs(model_name, specs, kwargs, dev, precision, batch_size, modes, compile, say):
    """Per variant, {mode: a callable running one batch or step}, all on one shared batch."""
    models = []
    for index, spec in enumerate(specs):
        say(f"timing: building {spec} ({index + 1}/{len(specs)})")
        model = build_model(model_name, spec, kwargs, dev)
        models.append(torch.compile(model) if compile else model)
    images, labels = make_batch(models[0], batch_size, dev)
    runs: list[dict[str, Callable[[], None]]] = []
    for model in models:
        variant_runs = {}
        if "infer" in modes:
            variant_runs["infer"] = lambda m=model: infer_step(m, images, precision)
        if "train" in modes:
            step = TrainStep(model, precision)
            variant_runs["train"] = lambda s=step: s(images, labels)
        runs.append(variant_runs)
    return runs


def _with_ratios(profiles: list[VariantProfile]) -> list[VariantProfile]:
    first = profiles[0]
    pairs = {
        "params_ratio": lambda p: (p.params, first.params),
        "macs_ratio": lambda p: (p.macs_linear, first.macs_linear),
        "infer_ratio": lambda p: (p.infer_img_s, first.infer_img_s),
        "train_ratio": lambda p: (p.train_img_s, first.train_img_s),
        "peak_mem_infer_ratio": lambda p: (p.peak_mem_infer_mb, first.peak_mem_infer_mb),
        "peak_mem_train_ratio": lambda p: (p.peak_mem_train_mb, first.peak_mem_train_mb),
        "static_train_ratio": lambda p: (p.static_train_bytes, first.static_train_bytes),
    }
    result = []
    for profile in profiles:
        ratios = {}
        for key, values in pairs.items():
            value = _ratio(*values(profile))
            ratios[key] = None if value is None else round(value, 4)
        result.append(VariantProfile(**{**profile.as_dict(), **ratios}))
    return result


# --------------------------------------------------------------------------------------------------
# Output


def device_name(device: str) -> str:
    """The CPU model (from /proc/cpuinfo) or the GPU name."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def format_table(profiles: list[VariantProfile]) -> str:
    """A header stating the settings and what memory means, then one row per variant."""
    first = profiles[0]
    method = first.memory_method or (CUDA_METHOD if first.device.startswith("cuda") else CPU_METHOD)
    header = [
        f"{first.model} on {first.device} ({device_name(first.device)}), {first.precision}, batch {first.batch_size}, "
        f"{first.threads} threads, warm-up {first.warmup}, repeats {first.repeats} (variants interleaved)"
        + (", torch.compile (compile time excluded)" if first.compile else ""),
        "img/s: median [min-max] over repeats; (x) = ratio to the first row; MB = 10^6 bytes",
        f"peak memory: {method}" if first.memory_method else "peak memory: not measured",
        "static train state: exact bytes of weights + grads + AdamW state (shared tensors once)",
    ]

    def rate(value, low, high, ratio):
        if value is None:
            return "-"
        return f"{value:.1f} [{low:.1f}-{high:.1f}] (x{ratio:.2f})"

    def mem(value, ratio):
        return "-" if value is None else f"{value:,.0f} (x{ratio:.2f})"

    columns = ["variant", "params", "MLP params", "MLPs", "GMACs lin/tot", "infer img/s", "train img/s",
               "peak infer MB", "peak train MB", "static train MB"]
    rows = [columns]
    for p in profiles:
        rows.append([
            p.reduction, f"{p.params / 1e6:.2f}M (x{p.params_ratio:.2f})", f"{p.mlp_params / 1e6:.2f}M",
            str(p.unique_mlps), f"{p.macs_linear_g:.2f}/{p.macs_total_g:.2f} (x{p.macs_ratio:.2f})",
            rate(p.infer_img_s, p.infer_img_s_min, p.infer_img_s_max, p.infer_ratio),
            rate(p.train_img_s, p.train_img_s_min, p.train_img_s_max, p.train_ratio),
            mem(p.peak_mem_infer_mb, p.peak_mem_infer_ratio), mem(p.peak_mem_train_mb, p.peak_mem_train_ratio),
            f"{p.static_train_bytes / MB:,.0f} (x{p.static_train_ratio:.2f})",
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(header + [""] + lines)


def write_throughput_json(study_dir: str | os.PathLike, variants: dict[str, str | ReductionSpec], model_name: str,
                          **profile_kwargs: Any) -> Path:
    """Profile a study's variants and write STUDY_DIR/throughput.json for its report (atomically).

    Args:
        study_dir: the study directory.
        variants: {variant name: reduction spec}; names sharing a spec are profiled once.
        model_name: timm base model of the study.
        **profile_kwargs: passed to ``profile_variants`` (default here: ``mode="infer"``, ``memory=False``).

    Returns:
        The path written: ``{variant: {"infer_img_s": float, ...settings}}``.
    """
    if not variants:
        raise VitreduceError("no variants to profile for throughput.json")
    canonical = {name: str(ReductionSpec.parse(spec)) for name, spec in variants.items()}
    profile_kwargs = {"mode": "infer", "memory": False, **profile_kwargs}
    if profile_kwargs["mode"] == "train":
        raise VitreduceError("throughput.json holds inference throughput; use mode 'infer' or 'both'")
    specs = list(dict.fromkeys(canonical.values()))
    by_spec = {p.reduction: p for p in profile_variants(model_name, specs, **profile_kwargs)}
    data = {}
    for name, spec in canonical.items():
        p = by_spec[spec]
        data[name] = {"infer_img_s": p.infer_img_s, "infer_img_s_min": p.infer_img_s_min,
                      "infer_img_s_max": p.infer_img_s_max, "reduction": spec, "model": model_name,
                      "device": p.device, "precision": p.precision, "batch_size": p.batch_size}
    path = Path(study_dir) / "throughput.json"
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path

