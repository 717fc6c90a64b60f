"""Statistics on arrays: sample summaries and the tests a study report makes. Nothing here reads a file.

Modules: ``sample`` (mean, sample sd with ddof=1, the degenerate-spread check and the t-based interval:
the one place they are computed).
"""
from vitreduce.statistics.sample import Sample, describe_sample, mean_std

__all__ = ["Sample", "describe_sample", "mean_std"]
