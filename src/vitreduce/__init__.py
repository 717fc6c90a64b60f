"""vitreduce: MLP parameter reduction (sharing, width slicing) for timm Vision Transformers."""
from vitreduce.accounting import ModelDescription, describe
from vitreduce.checkpoint import load, save
from vitreduce.errors import VitreduceError
from vitreduce.models import create_model
from vitreduce.reduce import reduce
from vitreduce.spec import ReductionSpec

__version__ = "0.1.0"

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
