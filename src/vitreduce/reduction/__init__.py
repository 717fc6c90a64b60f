"""Model surgery and accounting: reduced timm ViTs, their parameter/MAC counts and self-describing checkpoints.

Modules: ``spec`` (the reduction spec string), ``blocks`` (a model's transformer blocks, by stage),
``gated`` (the MLP kinds: plain, packed and split gated, and slicing each), ``surgery`` (``reduce``: sharing
and width slicing over a built timm model), ``architecture`` (what a model may be built with: allowed
kwargs, supported families, the size limit, no downloads), ``models`` (``create_model`` and the registered
timm variants), ``params`` (walks over unique tensors), ``weights`` (reading plain weight files),
``checkpoint`` (``save``/``load``), ``accounting`` (``describe``), ``features`` (timm's feature API:
``feature_backbone``) and ``backbone`` (``load_backbone_weights``: a model file into a built backbone).
The public API is re-exported here (``vitreduce`` re-exports the same names).
"""
from vitreduce.lazy import lazy_exports

# Imported on first use (vitreduce.lazy): the reduction spec string (`spec`) imports no torch, so that reading a
# config or a study spec needs none.
_EXPORTS = {
    "ModelDescription": "vitreduce.reduction.accounting",
    "describe": "vitreduce.reduction.accounting",
    "load_backbone_weights": "vitreduce.reduction.backbone",
    "load": "vitreduce.reduction.checkpoint",
    "save": "vitreduce.reduction.checkpoint",
    "feature_backbone": "vitreduce.reduction.features",
    "create_model": "vitreduce.reduction.models",
    "ReductionSpec": "vitreduce.reduction.spec",
    "reduce": "vitreduce.reduction.surgery",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["ModelDescription", "ReductionSpec", "create_model", "describe", "feature_backbone", "load",
           "load_backbone_weights", "reduce", "save"]
