"""Data: ImageFolder trees, timm's transforms and Mixup, exactly reproducible batches, the synthetic dataset.

Modules: ``config`` (the ``data:``/``augment:`` sections), ``images`` (scanning, checking and reading
image folders), ``transforms`` (timm's transforms and the matching loss), ``sampling`` (seeded epoch
orders), ``shards`` (reading tar shard sets), ``shard_writer`` (writing and indexing them), ``source``
(folder or shards, chosen by ``data.format``), ``loaders`` (train/eval batches), ``recorded`` (the class
names and eval preprocessing a model file records), ``synth`` (the built-in dataset) and ``shapes`` (how
its images are drawn). The names other packages use are re-exported here.
"""
from vitreduce.lazy import lazy_exports

# Imported on first use (vitreduce.lazy): the config sections (`config`, `synth`) import no torch, so that reading a
# config or a study spec needs none.
_EXPORTS = {
    "AugmentConfig": "vitreduce.data.config",
    "DataConfig": "vitreduce.data.config",
    "BadImageTracker": "vitreduce.data.images",
    "Batch": "vitreduce.data.loaders",
    "EvalLoader": "vitreduce.data.loaders",
    "TrainLoader": "vitreduce.data.loaders",
    "build_eval_loader": "vitreduce.data.loaders",
    "build_train_loader": "vitreduce.data.loaders",
    "header_entries": "vitreduce.data.recorded",
    "index_shard_set": "vitreduce.data.shard_writer",
    "write_shards": "vitreduce.data.shard_writer",
    "check_dataset": "vitreduce.data.source",
    "data_format": "vitreduce.data.source",
    "open_split": "vitreduce.data.source",
    "SynthConfig": "vitreduce.data.synth",
    "ensure_synth": "vitreduce.data.synth",
    "write_synth_dataset": "vitreduce.data.synth",
    "eval_transform": "vitreduce.data.transforms",
    "train_loss_fn": "vitreduce.data.transforms",
    "train_transform": "vitreduce.data.transforms",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

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
