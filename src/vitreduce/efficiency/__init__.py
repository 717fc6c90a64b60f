"""Efficiency of reduced variants: throughput and memory, measured side by side.

Modules: ``workload`` (the model, batch and steps being measured), ``settings`` (checked profiling
settings), ``memory`` (exact static memory, measured peak in a fresh process), ``profiler``
(``profile_variants``: interleaved timing), ``results`` (``VariantProfile`` and its table).
"""
from vitreduce.efficiency.profiler import profile_variants, write_throughput_json
from vitreduce.efficiency.results import VariantProfile, format_table

__all__ = ["VariantProfile", "format_table", "profile_variants", "write_throughput_json"]
