"""Sharpness of a trained model's loss: Hessian products and spectra, SAM/ASAM, loss landscapes.

Modules: ``hessian`` (products, top eigenvalues, trace, SAM over any loss and parameter list),
``options`` (``SharpnessOptions``, shared by the CLI, studies and the API), ``batches`` (the fixed
subset of a split the loss is measured on), ``measures`` (``analyze_sharpness``), ``landscape``
(1D/2D surfaces and interpolation), ``landscape_plots`` (their PNGs), ``progress``.
"""
from vitreduce.lazy import lazy_exports

# Imported on first use (vitreduce.lazy): the options (`options`) import no torch, so that a study spec's
# `analysis:` section needs none.
_EXPORTS = {
    "LossBatch": "vitreduce.sharpness.batches",
    "load_batches": "vitreduce.sharpness.batches",
    "SharpnessResult": "vitreduce.sharpness.measures",
    "analyze_sharpness": "vitreduce.sharpness.measures",
    "SharpnessOptions": "vitreduce.sharpness.options",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["LossBatch", "SharpnessOptions", "SharpnessResult", "analyze_sharpness", "load_batches"]
