"""Data: ImageFolder trees, timm's transforms and Mixup, exactly reproducible batches, the synthetic dataset.

Modules: ``config`` (the ``data:``/``augment:`` sections), ``images`` (scanning, checking and reading
image folders), ``transforms`` (timm's transforms and the matching loss), ``sampling`` (seeded epoch
orders), ``shards`` (reading tar shard sets), ``shard_writer`` (writing and indexing them), ``source``
(folder or shards, chosen by ``data.format``), ``loaders`` (train/eval batches), ``recorded`` (the class
names and eval preprocessing a model file records), ``synth`` (the built-in dataset) and ``shapes`` (how
its images are drawn). The names other packages use are re-exported here.
"""
from vitreduce.data.config import AugmentConfig, DataConfig
from vitreduce.data.images import BadImageTracker
from vitreduce.data.loaders import Batch, EvalLoader, TrainLoader, build_eval_loader, build_train_loader
from vitreduce.data.recorded import header_entries
from vitreduce.data.shard_writer import index_shard_set, write_shards
from vitreduce.data.source import check_dataset, data_format, open_split
from vitreduce.data.synth import SynthConfig, ensure_synth, write_synth_dataset
from vitreduce.data.transforms import eval_transform, train_loss_fn, train_transform

__all__ = [
    "AugmentConfig",
    "BadImageTracker",
    "Batch",
    "DataConfig",
    "EvalLoader",
    "SynthConfig",
    "TrainLoader",
    "build_eval_loader",
    "build_train_loader",
    "check_dataset",
    "data_format",
    "ensure_synth",
    "header_entries",
    "eval_transform",
    "index_shard_set",
    "open_split",
    "train_loss_fn",
    "train_transform",
    "write_shards",
    "write_synth_dataset",
]
