"""Measured inference throughput of a study's variants (throughput.json) and its ratio to a baseline."""
from __future__ import annotations

from vitreduce.numbers import is_finite, ranges_overlap


def _number(value) -> float | None:
    return float(value) if is_finite(value) else None


def summarize_throughput(record: dict | None) -> dict | None:
    """throughput.json's entry of one variant as {"median", "min", "max", "device", "batch_size", "precision"}."""
    if not record or not is_finite(record.get("infer_img_s")):
        return None
    return {"median": float(record["infer_img_s"]), "min": _number(record.get("infer_img_s_min")),
            "max": _number(record.get("infer_img_s_max")), "device": record.get("device"),
            "batch_size": record.get("batch_size"), "precision": record.get("precision"),
            "base_model": record.get("base_model")}  # None in files written before studies of several models


def throughput_ratio(variant: dict | None, baseline: dict | None) -> tuple[float | None, str]:
    """(median / baseline median, why) where the [min, max] ranges do not overlap; else (None, the reason)."""
    if variant is None or baseline is None:
        return None, "no throughput"
    if None in (variant["min"], variant["max"], baseline["min"], baseline["max"]):
        return None, "no range"
    if ranges_overlap(variant["min"], variant["max"], baseline["min"], baseline["max"]):
        return None, "ranges overlap"
    return variant["median"] / baseline["median"], "ranges apart"


def same_model_baseline(variant: str, measured: dict[str, dict], summary: dict, baseline: str) -> str | None:
    """The study's baseline if profiled as the same base model (always, in files naming none), else that base
    model's unreduced variant (a sweep's ``<label>.baseline``), else None: speeds of two models are not compared."""
    model = measured[variant]["base_model"]
    if model is None or measured.get(baseline, {}).get("base_model") == model:
        return baseline
    return next((v for v, t in measured.items() if t["base_model"] == model
                 and summary[v].get("reduction") in ("none", None)), None)
