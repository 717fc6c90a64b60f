"""vitreduce: MLP parameter reduction (sharing, width slicing) for timm Vision Transformers."""
from vitreduce.errors import VitreduceError
from vitreduce.reduction.accounting import ModelDescription, describe
from vitreduce.reduction.checkpoint import load, save
from vitreduce.reduction.models import create_model
from vitreduce.reduction.spec import ReductionSpec
from vitreduce.reduction.surgery import reduce
from vitreduce.version import __version__

__all__ = [
    "ModelDescription",
    "ReductionSpec",
    "VitreduceError",
    "__version__",
    "create_model",
    "describe",
    "load",
    "reduce",
    "save",
]
