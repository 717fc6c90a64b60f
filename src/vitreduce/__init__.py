"""vitreduce: MLP parameter reduction (sharing, width slicing) for timm Vision Transformers.

The names below are imported on first use (``vitreduce.lazy``): `import vitreduce` alone imports no torch.
The reduced variants are registered with timm as soon as timm is imported too, before or after vitreduce.
"""
import importlib
import sys

from vitreduce.errors import VitreduceError
from vitreduce.lazy import after_import, lazy_exports
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


def _register_with_timm() -> None:
    # When a module of vitreduce.reduction is the one importing timm (models itself, or a module models imports),
    # registering here would re-enter it half-initialised; models registers the names as its own import ends
    # (every path that builds a reduced model imports it).
    if not any(name.startswith("vitreduce.reduction.") and getattr(module.__spec__, "_initializing", False)
               for name, module in list(sys.modules.items())):
        importlib.import_module("vitreduce.reduction.models")


after_import("timm", _register_with_timm)

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
