"""Measured inference throughput of a study's variants (throughput.json) and its ratio to a baseline."""
from __future__ import annotations

from vitreduce.numbers import is_finite, ranges_overlap
from vitreduce.report.records import Throughput, VariantEntry


def _number(value) -> float | None:
    return float(value) if is_finite(value) else None


def summarize_throughput(record: dict | None) -> Throughput | None:
    """throughput.json's entry of one variant (without its ratio to a baseline: vitreduce.report.runs adds it)."""
    if not record or not is_finite(record.get("infer_img_s")):
        return None
    return Throughput(float(record["infer_img_s"]), _number(record.get("infer_img_s_min")),
                      _number(record.get("infer_img_s_max")), record.get("device"), record.get("batch_size"),
                      record.get("precision"), record.get("base_model"))


def throughput_ratio(variant: Throughput | None, baseline: Throughput | None) -> tuple[float | None, str]:
    """(median / baseline median, why) where the [min, max] ranges do not overlap; else (None, the reason)."""
    if variant is None or baseline is None:
        return None, "no throughput"
    if None in (variant.min, variant.max, baseline.min, baseline.max):
        return None, "no range"
    if ranges_overlap(variant.min, variant.max, baseline.min, baseline.max):
        return None, "ranges overlap"
    return variant.median / baseline.median, "ranges apart"


def same_model_baseline(variant: str, measured: dict[str, Throughput], summary: dict[str, VariantEntry],
                        baseline: str) -> str | None:
    """The study's baseline if profiled as the same base model (always, in files naming none), else that base
    model's unreduced variant (a sweep's ``<label>.baseline``), else None: speeds of two models are not compared."""
    model = measured[variant].base_model
    if model is None or (baseline in measured and measured[baseline].base_model == model):
        return baseline
    return next((v for v, t in measured.items() if t.base_model == model
                 and summary[v].reduction in ("none", None)), None)
