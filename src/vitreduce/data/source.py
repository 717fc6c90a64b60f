"""Where a split's samples come from: an ImageFolder tree or a tar shard set, chosen by ``data.format``.

Both give a dataset loaded by ``(index, sample_seed)`` with the same items and the same ``classes``, so
the loaders, evaluation and the sharpness batches have one code path whatever the format.
``data.format: auto`` reads a shard set when ``data.root`` holds its marker (and says so once, in the
pre-flight check), and an ImageFolder tree otherwise.
"""
from __future__ import annotations

from pathlib import Path

from vitreduce.data import images
from vitreduce.data.config import DataConfig
from vitreduce.data.shards import MARKER, ShardSamples, check_shard_files, is_shard_set, read_marker, split_entry
from vitreduce.errors import VitreduceError


def data_format(data: DataConfig) -> str:
    """``folder`` or ``shards``: ``data.format``, or for ``auto`` whether ``data.root`` holds a shard set's marker."""
    if data.format != "auto":
        return data.format
    return "shards" if is_shard_set(Path(data.root)) else "folder"


def open_split(data: DataConfig, split: str, transform):
    """The samples of one split (``ImageFolderSamples`` or ``ShardSamples``), read through ``transform``."""
    root = Path(data.root).expanduser()
    if data_format(data) == "shards":
        _require_marker(root)
        return ShardSamples(root, split, transform)
    _refuse_unindexed_tars(root, split)
    return images.split_samples(data, split, transform)


def check_dataset(data: DataConfig, num_classes: int | None) -> int:
    """Refuse a dataset the loaders could not use, before any work starts; return its number of classes.

    A shard set: its marker, both splits' records and every shard's size (a truncated or missing shard is
    refused here); an image folder: ``vitreduce.data.images.check_dataset``. Either way the number of
    classes must be the model's.
    """
    root = Path(data.root).expanduser()
    if data_format(data) == "folder":
        _refuse_unindexed_tars(root, data.train_split)
        return images.check_dataset(data, num_classes)
    _require_marker(root)
    if data.format == "auto":
        print(f"data.root {root} holds {MARKER}: reading its tar shards (data.format: shards says so explicitly)")
    marker = read_marker(root)
    for split, key in ((data.train_split, "data.train_split"), (data.val_split, "data.val_split")):
        split_entry(root, marker, split, key)
        check_shard_files(root, marker, split)
    classes = marker["classes"]
    if num_classes is not None and num_classes != len(classes):
        raise VitreduceError(f"the shard set {root} has {len(classes)} classes, the model {num_classes}: "
                             f"set model.num_classes={len(classes)}")
    return len(classes)


def _require_marker(root: Path) -> None:
    if not is_shard_set(root):
        raise VitreduceError(f"data.format is shards but {root} has no {MARKER} ({images.folders_in(root)}): "
                             "point data.root at a folder written by `vitreduce data shard` (or indexed by "
                             "`vitreduce data index`), or set data.format: folder")


def _refuse_unindexed_tars(root: Path, split: str) -> None:
    """A folder of tar shards without the marker is not an image folder: say how to index it."""
    if not (root / split).is_dir() and root.is_dir() and any(root.glob("*.tar")):
        raise VitreduceError(f"{root} holds .tar files but no {MARKER} and no {split}/ folder: index the shards "
                             "with `vitreduce data index` (see docs/training.md), or point data.root at an "
                             "ImageFolder root")
