"""vitreduce: MLP parameter reduction (sharing, width slicing) for timm Vision Transformers.

The names below are imported on first use (``vitreduce.lazy``): `import vitreduce` alone imports no torch.
"""
from vitreduce.errors import VitreduceError
from vitreduce.lazy import lazy_exports
from vitreduce.version import __version__

_EXPORTS = {
    "ModelDescription": "vitreduce.reduction.accounting",
    "describe": "vitreduce.reduction.accounting",
    "load": "vitreduce.reduction.checkpoint",
    "save": "vitreduce.reduction.checkpoint",
    "create_model": "vitreduce.reduction.models",
    "ReductionSpec": "vitreduce.reduction.spec",
    "reduce": "vitreduce.reduction.surgery",
    "feature_backbone": "vitreduce.reduction.features",
    "load_backbone_weights": "vitreduce.reduction.backbone",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "ModelDescription",
    "ReductionSpec",
    "VitreduceError",
    "__version__",
    "create_model",
    "describe",
    "feature_backbone",
    "load",
    "load_backbone_weights",
    "reduce",
    "save",
]
