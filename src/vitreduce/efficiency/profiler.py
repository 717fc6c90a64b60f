"""Efficiency of reduced variants: throughput, peak memory and the exact static breakdown.

All variants are timed in one process, interleaved: each repeat times every variant once (the
starting variant rotating), so machine drift and background load affect them alike. A timed run
is one batch (inference) or one training step (see ``vitreduce.efficiency.workload``); throughput
is the median over repeats, with min and max. Peak memory is measured per variant in a fresh
process (see ``vitreduce.efficiency.memory``). Ratios are against the first variant. Weights are
random: speed does not depend on their values, only on the architecture.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from vitreduce.device import Precision, synchronize
from vitreduce.efficiency.memory import MB, measure_peak_memory, static_memory
from vitreduce.efficiency.results import VariantProfile, with_ratios
from vitreduce.efficiency.settings import Mode, ProfileSettings, check_cpu_ram, check_settings, parse_reductions
from vitreduce.efficiency.workload import STEP_KINDS, StepKind, TrainStep, build_model, infer_step, make_batch
from vitreduce.errors import VitreduceError
from vitreduce.files import write_json
from vitreduce.reduction.accounting import describe
from vitreduce.reduction.models import create_model
from vitreduce.reduction.spec import ReductionSpec

__all__ = ["profile_variants", "throughput_records", "write_throughput_json"]

Run = Callable[[], None]  # one batch or one training step of one variant
Say = Callable[[str], None]  # reports a line of progress


def profile_variants(
    model_name: str,
    reductions: Sequence[str | ReductionSpec] | None = None,
    *,
    device: str = "cpu",
    precision: Precision = "fp32",
    batch_size: int = 32,
    mode: Mode = "both",
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
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (cuda when available).
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
    settings = check_settings(model_name, device=device, precision=precision, batch_size=batch_size, mode=mode,
                              compile=compile, repeats=repeats, warmup=warmup, img_size=img_size,
                              num_classes=num_classes, model_kwargs=model_kwargs)
    specs = parse_reductions(reductions)
    accounts = _account(settings, specs)
    peaks = _measure_memory(settings, specs, say) if memory else [_peak_fields(None) for _ in specs]
    times = _time_variants(settings, specs, say)
    profiles = [
        VariantProfile(model=model_name, reduction=str(spec), device=str(settings.device), precision=precision,
                       batch_size=batch_size, threads=settings.threads, compile=compile, repeats=repeats,
                       warmup=warmup, **account, **timing, **peak)
        for spec, account, timing, peak in zip(specs, accounts, times, peaks, strict=True)
    ]
    return with_ratios(profiles)


# --------------------------------------------------------------------------------------------------
# Counts and memory


def _account(settings: ProfileSettings, specs: list[ReductionSpec]) -> list[dict[str, Any]]:
    """Per variant, its counts and exact static memory, from the meta device (no memory, no arithmetic).

    A CPU run that would not fit in the RAM available is refused here, before anything is built.
    """
    metas = [create_model(settings.model_name, reduction=s.with_shapes_only(), device="meta", **settings.model_kwargs)
             for s in specs]
    statics = [static_memory(m) for m in metas]
    if settings.device.type == "cpu":
        check_cpu_ram(settings, metas, statics)
    accounts = []
    for meta, static in zip(metas, statics, strict=True):
        desc = describe(meta)
        accounts.append({
            "params": desc.params, "mlp_params": desc.mlp_params, "unique_mlps": desc.unique_mlps,
            "macs_linear": desc.macs_linear, "macs_total": desc.macs_total, **static,
        })
    return accounts


def _peak_fields(peak: dict[str, Any] | None) -> dict[str, Any]:
    """A memory measurement as VariantProfile fields, in MB (all None when not measured)."""
    def mb(key: str) -> float | None:
        return None if peak is None or peak[key] is None else round(peak[key] / MB, 3)

    return {"peak_mem_infer_mb": mb("infer_bytes"), "peak_mem_train_mb": mb("train_bytes"),
            "memory_method": None if peak is None else peak["method"]}


def _measure_memory(settings: ProfileSettings, specs: list[ReductionSpec], say: Say) -> list[dict[str, Any]]:
    peaks = []
    for index, spec in enumerate(specs):
        say(f"memory: {spec} ({index + 1}/{len(specs)}, fresh process)")
        peaks.append(_peak_fields(measure_peak_memory(settings.memory_job(spec))))
    return peaks


# --------------------------------------------------------------------------------------------------
# Throughput


def _time_variants(settings: ProfileSettings, specs: list[ReductionSpec], say: Say) -> list[dict[str, float | None]]:
    """{infer,train}_img_s{,_min,_max} per variant, timed round-robin with every variant resident."""
    try:
        with _room_for_graphs(2 * len(specs)) if settings.compile else contextlib.nullcontext():
            runs = _build_runs(settings, specs, say)
            _warm_up(settings, specs, runs, say)
            seconds = _time_round_robin(settings, runs, say, [str(spec) for spec in specs])
    except torch.OutOfMemoryError:
        raise VitreduceError(
            f"batch {settings.batch_size} of {len(specs)} variants of {settings.model_name} does not fit on "
            f"{settings.device}; use a smaller --batch-size or fewer --reduction variants (all variants are "
            "resident at once while timing)"
        ) from None
    return [_rates(settings.batch_size, per_mode) for per_mode in seconds]


def _room_for_graphs(graphs: int):
    """The variants' compiled graphs (one per variant and mode) share one forward's code: let dynamo keep
    them all; past its recompile limit it would silently run the rest eagerly."""
    from torch._dynamo import config as dynamo_config

    return dynamo_config.patch(recompile_limit=max(dynamo_config.recompile_limit, graphs + 2))


def _build_runs(settings: ProfileSettings, specs: list[ReductionSpec], say: Say) -> list[dict[StepKind, Run]]:
    """Per variant, {mode: a callable running one batch or step}, all on one shared batch."""
    models = []
    for index, spec in enumerate(specs):
        say(f"timing: building {spec} ({index + 1}/{len(specs)})")
        model = build_model(settings.model_name, spec, settings.model_kwargs, settings.device)
        models.append(torch.compile(model) if settings.compile else model)
    images, labels = make_batch(models[0], settings.batch_size, settings.device)
    precision = settings.precision
    runs: list[dict[StepKind, Run]] = []
    for model in models:
        variant_runs: dict[StepKind, Run] = {}
        if "infer" in settings.modes:
            variant_runs["infer"] = lambda m=model: infer_step(m, images, precision)
        if "train" in settings.modes:
            step = TrainStep(model, precision)
            variant_runs["train"] = lambda s=step: s(images, labels)
        runs.append(variant_runs)
    return runs


def _warm_up(settings: ProfileSettings, specs: list[ReductionSpec], runs: list[dict[StepKind, Run]], say: Say) -> None:
    for spec, variant_runs in zip(specs, runs, strict=True):
        for mode in settings.modes:
            for _ in range(settings.warmup):
                variant_runs[mode]()
        if settings.warmup:
            say(f"timing: warmed up {spec}")


def _time_round_robin(settings: ProfileSettings, runs: list[dict[StepKind, Run]], say: Say,
                      names: list[str]) -> list[dict[StepKind, list[float]]]:
    """Seconds per run: each repeat times every variant once, the first variant rotating; each repeat's
    times are reported as it ends."""
    seconds: list[dict[StepKind, list[float]]] = [{mode: [] for mode in settings.modes} for _ in runs]
    for repeat in range(settings.repeats):
        for offset in range(len(runs)):
            index = (repeat + offset) % len(runs)
            for mode in settings.modes:
                seconds[index][mode].append(_time(runs[index][mode], settings.device))
        total = sum(per_mode[mode][-1] for per_mode in seconds for mode in settings.modes)
        say(f"timing: repeat {repeat + 1}/{settings.repeats} done in {total * 1e3:.1f} ms ("
            + ", ".join(f"{name} {mode} {per_mode[mode][-1] * 1e3:.1f} ms"
                        for name, per_mode in zip(names, seconds, strict=True) for mode in settings.modes) + ")")
    return seconds


def _time(run: Run, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def _rates(batch_size: int, seconds: dict[StepKind, list[float]]) -> dict[str, float | None]:
    """Images/s median, min and max per step kind (None for a step that was not run)."""
    row: dict[str, float | None] = {}
    for mode in STEP_KINDS:
        rates = [batch_size / s for s in seconds.get(mode, [])]
        row[f"{mode}_img_s"] = round(statistics.median(rates), 3) if rates else None
        row[f"{mode}_img_s_min"] = round(min(rates), 3) if rates else None
        row[f"{mode}_img_s_max"] = round(max(rates), 3) if rates else None
    return row


# --------------------------------------------------------------------------------------------------
# A study's throughput.json


def write_throughput_json(study_dir: str | os.PathLike, variants: dict[str, str | ReductionSpec], model_name: str,
                          **profile_kwargs: Any) -> Path:
    """Profile a study's variants of one base model and write STUDY_DIR/throughput.json (atomically).

    Args:
        study_dir: the study directory.
        variants: {variant name: reduction spec}; names sharing a spec are profiled once.
        model_name: timm base model of the study.
        **profile_kwargs: passed to ``throughput_records``.

    Returns:
        The path written: ``{variant: {"infer_img_s": float, ...settings}}``.
    """
    path = Path(study_dir) / "throughput.json"
    write_json(path, throughput_records(variants, model_name, **profile_kwargs))
    return path


def throughput_records(variants: dict[str, str | ReductionSpec], model_name: str, base_model: str | None = None,
                       **profile_kwargs: Any) -> dict[str, dict[str, Any]]:
    """throughput.json's entries of one base model's variants, profiled interleaved in one process.

    Args:
        variants: {variant name: reduction spec}; names sharing a spec are profiled once.
        model_name: timm base model.
        base_model: what tells this base model apart from a study's others (default ``model_name``); the
            report compares each variant's throughput with the baseline of the same ``base_model`` only.
        **profile_kwargs: passed to ``profile_variants`` (default here: ``mode="infer"``, ``memory=False``).

    Returns:
        ``{variant: {"infer_img_s": float, "infer_img_s_min", "infer_img_s_max", "reduction", "model",
        "base_model", "device", "precision", "batch_size"}}``.
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
                      "base_model": base_model or model_name, "device": p.device, "precision": p.precision,
                      "batch_size": p.batch_size}
    return data
