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
from vitreduce.reduction.accounting import ModelDescription, describe
from vitreduce.reduction.backbone import load_backbone_weights
from vitreduce.reduction.checkpoint import load, save
from vitreduce.reduction.features import feature_backbone
from vitreduce.reduction.models import create_model
from vitreduce.reduction.spec import ReductionSpec
from vitreduce.reduction.surgery import reduce

__all__ = ["ModelDescription", "ReductionSpec", "create_model", "describe", "feature_backbone", "load",
           "load_backbone_weights", "reduce", "save"]
