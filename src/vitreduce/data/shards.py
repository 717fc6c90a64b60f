"""Tar shard sets (WebDataset's layout) read by random access: each sample addressed by its global index.

A shard set is a folder holding, per split, tar shards ``<split>-000000.tar, <split>-000001.tar, ...``
(each sample a ``<key>.<image extension>`` member and a ``<key>.cls`` member holding its class index in
decimal, WebDataset's convention), one index file per split (``<split>-index.tsv``: per sample, its
shard, key, class, the byte offset and size of its image member and the image extension) and the
marker ``vitreduce_shards.json`` (class names, and per split the index file and each shard's name,
sample count and size in bytes). ``vitreduce.data.shard_writer`` writes them.

Why random access and not a stream: a sample is a byte range of one shard, so the loaders order the
whole split with the same seeded sampler as an image folder (``vitreduce.data.sampling``) and read each
sample with one positioned read (``os.pread``). The order, the per-sample seeds and so the batches are
those of the folder the shards were made from (the writer keeps its order), for any number of workers;
a resumed epoch starts at its next sample without reading the ones already consumed. The cost is one
seek per sample instead of a sequential read of each shard (see docs/training.md).

Robustness as for folders (``vitreduce.data.images``): an image that cannot be decoded, or whose bytes
are missing because its shard is shorter than the index says, is dropped from its batch and named as
``shard:key (why)``; a sample over ``MAX_SAMPLE_BYTES`` is never read; ``check_shards`` refuses a
missing, truncated or grown shard, a damaged index and a class list that differs from the run's before
any work starts.
"""
from __future__ import annotations

import errno
import io
import json
import os
import stat
from pathlib import Path
from typing import NamedTuple

import numpy as np
from torch.utils.data import Dataset

from vitreduce.data.pixels import decode_rgb
from vitreduce.data.sampling import seeded_rngs
from vitreduce.errors import VitreduceError

MARKER = "vitreduce_shards.json"
FORMAT, VERSION = "vitreduce-shards", 1
INDEX_COLUMNS = ("shard", "key", "class", "offset", "size", "ext")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "pgm", "tif", "tiff")
MAX_SAMPLE_BYTES = 256 << 20  # one image member; larger ones are reported, never read
MAX_KEY_CHARS = 255
MAX_MARKER_BYTES = 64 << 20


def is_shard_set(root: Path) -> bool:
    """Whether ``root`` holds a shard set's marker."""
    return (Path(root).expanduser() / MARKER).is_file()


def read_marker(root: Path) -> dict:
    """The shard set's marker, checked for the fields the reader uses; VitreduceError naming what is wrong."""
    path = Path(root).expanduser() / MARKER
    try:
        if path.stat().st_size > MAX_MARKER_BYTES:
            raise VitreduceError(f"{path} is over {MAX_MARKER_BYTES >> 20} MiB: not a shard set's marker")
        marker = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise VitreduceError(f"{path} cannot be read ({err}); write the shard set again with "
                             "`vitreduce data shard`") from None
    ok = (isinstance(marker, dict) and marker.get("format") == FORMAT and isinstance(marker.get("classes"), list)
          and isinstance(marker.get("splits"), dict))
    if not ok or marker.get("version") != VERSION:
        raise VitreduceError(f"{path} is not a version-{VERSION} marker of a vitreduce shard set; write the "
                             "shard set again with `vitreduce data shard`")
    classes = marker["classes"]
    if not classes or not all(isinstance(name, str) and name for name in classes) or len(set(classes)) < len(classes):
        raise VitreduceError(f"{path}: the class names must be distinct non-empty strings; index the shards again")
    return marker


def split_entry(root: Path, marker: dict, split: str, key: str | None = None) -> dict:
    """The marker's record of one split; VitreduceError listing the splits there when it is missing."""
    entry = marker["splits"].get(split)
    if not isinstance(entry, dict):
        listed = ", ".join(sorted(marker["splits"]))
        raise VitreduceError(f"the shard set {root} has no split {split!r} (it has {listed}): "
                             + (f"check {key}" if key else "choose one of those"))
    return entry


class ShardIndex(NamedTuple):
    """One split's samples, as columns: sample ``i`` is ``size[i]`` bytes at ``offset[i]`` of ``shards[shard[i]]``."""

    shards: list[str]  # shard file names, in order
    shard: np.ndarray  # (N,) int32
    keys: list[str]
    targets: np.ndarray  # (N,) int64 class indices
    offset: np.ndarray  # (N,) int64
    size: np.ndarray  # (N,) int64


def load_index(root: Path, marker: dict, split: str) -> ShardIndex:
    """Read and check one split's index file against the marker (counts, classes, extents within each shard)."""
    entry = split_entry(root, marker, split)
    shards = [shard["name"] for shard in entry["shards"]]
    path = Path(root).expanduser() / entry["index"]
    rows = _index_rows(path)
    number = {name: i for i, name in enumerate(shards)}
    try:
        shard = np.array([number[row[0]] for row in rows], dtype=np.int32)
        offset = np.array([int(row[3]) for row in rows], dtype=np.int64)
        size = np.array([int(row[4]) for row in rows], dtype=np.int64)
        targets = np.array([int(row[2]) for row in rows], dtype=np.int64)
    except (KeyError, ValueError) as err:
        raise VitreduceError(f"{path}: a row names an unknown shard or has a non-integer field ({err}); "
                             "write the shard set again") from None
    index = ShardIndex(shards, shard, [row[1] for row in rows], targets, offset, size)
    _check_index(path, index, entry, len(marker["classes"]))
    return index


def _index_rows(path: Path) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8") as handle:
            header = handle.readline().rstrip("\n").split("\t")
            rows = [line.rstrip("\n").split("\t") for line in handle]
    except (OSError, UnicodeDecodeError) as err:
        raise VitreduceError(f"{path} cannot be read ({err}); write the shard set again") from None
    if tuple(header) != INDEX_COLUMNS or any(len(row) != len(INDEX_COLUMNS) for row in rows):
        raise VitreduceError(f"{path} is not a shard index (tab-separated {', '.join(INDEX_COLUMNS)}); "
                             "write the shard set again")
    return rows


def _check_index(path: Path, index: ShardIndex, entry: dict, num_classes: int) -> None:
    """Counts per shard as the marker says, classes in range, each extent inside its shard, keys bounded."""
    counts = np.bincount(index.shard, minlength=len(index.shards)).tolist()
    expected = [shard["samples"] for shard in entry["shards"]]
    problem = None
    if counts != expected:
        problem = f"samples per shard {counts[:8]}, the marker says {expected[:8]}"
    elif len(index.targets) and not 0 <= index.targets.min() <= index.targets.max() < num_classes:
        problem = f"class indices outside 0..{num_classes - 1}"
    elif len(index.offset) and (index.offset.min() < 0 or index.size.min() < 0):
        problem = "negative offsets or sizes"
    elif len(index.offset) and (index.offset + index.size > _shard_bytes(entry)[index.shard]).any():
        problem = "a sample extends past the end of its shard as the marker records it"
    elif any(len(key) > MAX_KEY_CHARS or not key for key in index.keys):
        problem = f"an empty key or one over {MAX_KEY_CHARS} characters"
    if problem:
        raise VitreduceError(f"{path} does not match its shard set ({problem}); write the shard set again")


def _shard_bytes(entry: dict) -> np.ndarray:
    return np.array([shard["bytes"] for shard in entry["shards"]], dtype=np.int64)


def check_shard_files(root: Path, marker: dict, split: str) -> None:
    """Refuse a split whose shards are missing, truncated or changed in size since they were indexed."""
    root = Path(root).expanduser()
    wrong = []
    for shard in split_entry(root, marker, split)["shards"]:
        path = root / shard["name"]
        try:
            found = path.stat().st_size
        except OSError as err:
            wrong.append(f"{shard['name']} ({err.strerror})")
            continue
        if found != shard["bytes"]:
            state = "truncated" if found < shard["bytes"] else "longer than indexed"
            wrong.append(f"{shard['name']} ({state}: {found} bytes, the index says {shard['bytes']})")
    if wrong:
        more = f" and {len(wrong) - 5} more" if len(wrong) > 5 else ""
        raise VitreduceError(f"{root}: {len(wrong)} shard(s) of {split} cannot be used: {'; '.join(wrong[:5])}{more}. "
                             "Copy them again (or write the shard set again)")


class ShardSamples(Dataset):
    """A split of a shard set, loaded by key ``(index, sample_seed)`` as ``ImageFolderSamples`` is.

    An item is ``(image, target, index, name)``; ``name`` is ``shard:key``, and ``image`` is None when
    the sample cannot be used, ``name`` then saying why. Shard files are opened on first use in each
    process (worker processes open their own).
    """

    def __init__(self, root: Path, split: str, transform):
        self.root = Path(root).expanduser()
        marker = read_marker(self.root)
        self.classes: list[str] = list(marker["classes"])
        self.index = load_index(self.root, marker, split)
        self.transform = transform
        self._handles: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.index.keys)

    @property
    def samples(self) -> list[tuple[str, int]]:
        """``(shard:key, class index)`` per sample, in order, as ``ImageFolderSamples.samples`` lists paths."""
        return [(self.name(i), int(self.index.targets[i])) for i in range(len(self))]

    def name(self, index: int) -> str:
        return f"{self.index.shards[self.index.shard[index]]}:{self.index.keys[index]}"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}}  # descriptors do not cross processes

    def __getitem__(self, key: tuple[int, int]):
        index, sample_seed = key
        target, name = int(self.index.targets[index]), self.name(index)
        with seeded_rngs(sample_seed):
            data, problem = self.read(index)
            if data is None:
                return None, target, index, f"{name} ({problem})"
            image, problem = decode_rgb(io.BytesIO(data), name)
            if image is None:
                return None, target, index, problem
            return self.transform(image), target, index, name

    def read(self, index: int) -> tuple[bytes | None, str]:
        """The image member's bytes, or None and why: one positioned read, never more than MAX_SAMPLE_BYTES."""
        size, offset = int(self.index.size[index]), int(self.index.offset[index])
        if size > MAX_SAMPLE_BYTES:
            return None, f"{size} bytes, over the limit of {MAX_SAMPLE_BYTES} bytes per sample"
        try:
            data = os.pread(self._handle(int(self.index.shard[index])), size, offset)
        except OSError as err:
            return None, f"cannot be read: {err.strerror}"
        if len(data) < size:
            return None, f"the shard ends at byte {offset + len(data)}, the index says {offset + size}: truncated"
        return data, ""

    def _handle(self, shard: int) -> int:
        if self._pid != os.getpid():  # a forked worker: open its own descriptors
            self._handles, self._pid = {}, os.getpid()
        if shard not in self._handles:
            # Non-blocking: a FIFO swapped in for a shard must not hang the worker; only regular files are read.
            handle = os.open(self.root / self.index.shards[shard], os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            if not stat.S_ISREG(os.fstat(handle).st_mode):
                os.close(handle)
                raise OSError(errno.EINVAL, "not a regular file")
            self._handles[shard] = handle
        return self._handles[shard]

    def __del__(self):
        if getattr(self, "_pid", None) == os.getpid():
            for handle in self._handles.values():
                os.close(handle)
