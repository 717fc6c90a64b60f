"""A profile's results: one row per variant, its ratios to the first variant, and the printed table."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from vitreduce.console import text_table
from vitreduce.device import Precision
from vitreduce.efficiency.memory import CPU_METHOD, CUDA_METHOD, MB
from vitreduce.numbers import format_macs, macs_unit, ranges_overlap


@dataclass(frozen=True)
class VariantProfile:
    """One variant's row. Field names are the JSON keys; None where a mode was not run."""

    model: str
    reduction: str
    device: str
    precision: Precision
    batch_size: int
    threads: int
    compile: bool
    repeats: int
    warmup: int
    params: int
    mlp_params: int
    unique_mlps: int
    macs_linear: int  # exact; rounded only where printed
    macs_total: int
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


# Each ratio field and the figure it compares.
_RATIOS = {
    "params_ratio": lambda p: p.params,
    "macs_ratio": lambda p: p.macs_linear,
    "infer_ratio": lambda p: p.infer_img_s,
    "train_ratio": lambda p: p.train_img_s,
    "peak_mem_infer_ratio": lambda p: p.peak_mem_infer_mb,
    "peak_mem_train_ratio": lambda p: p.peak_mem_train_mb,
    "static_train_ratio": lambda p: p.static_train_bytes,
}


def with_ratios(profiles: list[VariantProfile]) -> list[VariantProfile]:
    """The rows with every ratio filled in against the first row (None where either figure is missing)."""
    first = profiles[0]
    result = []
    for profile in profiles:
        ratios = {}
        for key, figure in _RATIOS.items():
            value, reference = figure(profile), figure(first)
            ratios[key] = None if value is None or not reference else round(value / reference, 4)
        result.append(VariantProfile(**{**profile.as_dict(), **ratios}))
    return result


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
    divisor, unit = macs_unit(p.macs_total for p in profiles)
    columns = ["variant", "params", "MLP params", "MLPs", f"{unit} lin/tot", "infer img/s", "train img/s",
               "peak infer MB", "peak train MB", "static train MB"]
    rows = [_cells(p, profiles[0], divisor) for p in profiles]
    return "\n".join(_settings_lines(profiles[0]) + ["", text_table(columns, rows)])


def _settings_lines(first: VariantProfile) -> list[str]:
    method = first.memory_method or (CUDA_METHOD if first.device.startswith("cuda") else CPU_METHOD)
    return [
        f"{first.model} on {first.device} ({device_name(first.device)}), {first.precision}, batch {first.batch_size}, "
        f"{first.threads} threads, warm-up {first.warmup}, repeats {first.repeats} (variants interleaved)"
        + (", torch.compile (compile time excluded)" if first.compile else ""),
        "img/s: median [min-max] over repeats; (x) = ratio to the first row, for img/s only where the two "
        "[min-max] ranges do not overlap ('overlaps': these repeats cannot tell the speeds apart); MB = 10^6 bytes",
        f"peak memory: {method}" if first.memory_method else "peak memory: not measured",
        "static train state: exact bytes of weights + grads + AdamW state (shared tensors once)",
    ]


def _cells(p: VariantProfile, first: VariantProfile, macs_divisor: float) -> list[str]:
    macs = f"{format_macs(p.macs_linear, macs_divisor)}/{format_macs(p.macs_total, macs_divisor)}"
    return [
        p.reduction, f"{p.params / 1e6:.2f}M (x{p.params_ratio:.2f})", f"{p.mlp_params / 1e6:.2f}M",
        str(p.unique_mlps), f"{macs} (x{p.macs_ratio:.2f})",
        _rate((p.infer_img_s, p.infer_img_s_min, p.infer_img_s_max), p.infer_ratio,
              (first.infer_img_s_min, first.infer_img_s_max), p is first),
        _rate((p.train_img_s, p.train_img_s_min, p.train_img_s_max), p.train_ratio,
              (first.train_img_s_min, first.train_img_s_max), p is first),
        _memory(p.peak_mem_infer_mb, p.peak_mem_infer_ratio), _memory(p.peak_mem_train_mb, p.peak_mem_train_ratio),
        f"{p.static_train_bytes / MB:,.0f} (x{p.static_train_ratio:.2f})",
    ]


def _rate(figures: tuple, ratio: float | None, reference: tuple, is_first: bool) -> str:
    """``median [min-max] (xRATIO)``; the ratio only for the first row or where the ranges are apart."""
    value, low, high = figures
    if value is None:
        return "-"
    apart = is_first or (None not in (low, high, *reference) and not ranges_overlap(low, high, *reference))
    return f"{value:.1f} [{low:.1f}-{high:.1f}] " + (f"(x{ratio:.2f})" if apart and ratio is not None else "(overlaps)")


def _memory(value: float | None, ratio: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} (x{ratio:.2f})"
