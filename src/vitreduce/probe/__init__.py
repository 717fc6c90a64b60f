"""Dense-task probes of a trained (reduced) model: how much sharing and narrowing cost on segmentation.

Modules: ``options`` (the probe's recipe and its checked settings), ``heads`` (patch-token features of
chosen blocks and the heads on them: linear, small decoder), ``metrics`` (confusion matrix, mIoU, pixel
accuracy, per class), ``segmentation`` (``run_segmentation_probe``: seeded, resumable training of the head
and its evaluation).
"""
from vitreduce.probe.options import ProbeOptions
from vitreduce.probe.segmentation import run_segmentation_probe

__all__ = ["ProbeOptions", "run_segmentation_probe"]
