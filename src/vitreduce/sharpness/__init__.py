"""Sharpness of a trained model's loss: Hessian products and spectra, SAM/ASAM, loss landscapes.

Modules: ``hessian`` (products, top eigenvalues, trace, SAM over any loss and parameter list),
``options`` (``SharpnessOptions``, shared by the CLI, studies and the API), ``batches`` (the fixed
subset of a split the loss is measured on), ``measures`` (``analyze_sharpness``), ``landscape``
(1D/2D surfaces and interpolation), ``landscape_plots`` (their PNGs), ``progress``.
"""
from vitreduce.sharpness.batches import LossBatch, load_batches
from vitreduce.sharpness.measures import SharpnessResult, analyze_sharpness
from vitreduce.sharpness.options import SharpnessOptions

__all__ = ["LossBatch", "SharpnessOptions", "SharpnessResult", "analyze_sharpness", "load_batches"]
