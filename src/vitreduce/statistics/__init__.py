"""Statistics on arrays: they take numbers and return typed records; nothing here reads a file.

Modules: ``sample`` (mean, sample sd with ddof=1, the degenerate-spread check and the t-based interval: the
one place they are computed), ``paired`` (the paired t-test over seeds, the image-level bootstrap and
McNemar tests, and the records of a comparison with the baseline), ``family`` (the confirmatory and
exploratory families, Holm and Benjamini-Hochberg, the verdict words), ``power`` (what the seeds could
detect), ``counts`` (Fisher's exact test of two event rates), ``noninferiority`` (the fixed-sequence
non-inferiority test of the degree statement and the fit's lack-of-fit check), ``pvalue`` (how a p-value
is printed), ``settings`` (the spec's ``statistics:`` section and its defaults).
"""
from vitreduce.lazy import lazy_exports

# Imported on first use (vitreduce.lazy): a study spec reads ``settings`` without scipy.
_EXPORTS = {"Sample": "vitreduce.statistics.sample", "describe_sample": "vitreduce.statistics.sample",
            "mean_std": "vitreduce.statistics.sample"}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["Sample", "describe_sample", "mean_std"]
