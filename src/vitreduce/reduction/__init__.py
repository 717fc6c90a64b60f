"""Model surgery and accounting: reduced timm ViTs, their parameter/MAC counts and self-describing checkpoints.

Modules: ``spec`` (the reduction spec string), ``blocks`` (a model's transformer blocks, by stage),
``gated`` (the MLP kinds: plain, packed and split gated, and slicing each), ``surgery`` (``reduce``: sharing
and width slicing over a built timm model), ``architecture`` (what a model may be built with: allowed
kwargs, supported families, the size limit, no downloads), ``models`` (``create_model`` and the registered
timm variants), ``params`` (walks over unique tensors), ``weights`` (reading plain weight files),
``checkpoint`` (``save``/``load``), ``accounting`` (``describe``). The public API is re-exported here
(``vitreduce`` re-exports the same names).
"""
from vitreduce.reduction.accounting import ModelDescription, describe
from vitreduce.reduction.checkpoint import load, save
from vitreduce.reduction.models import create_model
from vitreduce.reduction.spec import ReductionSpec
from vitreduce.reduction.surgery import reduce

__all__ = ["ModelDescription", "ReductionSpec", "create_model", "describe", "load", "reduce", "save"]
