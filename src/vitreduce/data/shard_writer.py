"""Writing shard sets (``vitreduce data shard``) and indexing tar shards (``vitreduce data index``).

``write_shards`` copies an ImageFolder tree into tar shards in the folder's own order (the order
``vitreduce.data.images.scan_split`` gives, so sample ``i`` of a split is image ``i`` of the folder and a
run reads the same batches from either), each image's bytes unchanged. The bytes are a function of the
images alone: members in sample order, ustar headers with no time, owner or permission taken from the
files, keys the sample's position. Everything is written under a temporary folder beside OUT and renamed
into place when complete, the marker last, so a crash never leaves a set that looks finished.

``index_shard_set`` indexes tar shards: the shards this module writes and any existing WebDataset set
whose samples have an image member and a ``.cls`` member. It reads each shard's tar headers with the
standard library's ``tarfile`` and records where each image's bytes lie; nothing else is hand-parsed.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

from vitreduce.data.images import scan_split
from vitreduce.data.shards import FORMAT, IMAGE_EXTENSIONS, INDEX_COLUMNS, MARKER, MAX_SAMPLE_BYTES, VERSION
from vitreduce.errors import VitreduceError
from vitreduce.files import make_temp_dir

SHARD_SIZE = 1000  # samples per shard by default: WebDataset's usual size, ~100 MiB of ImageNet JPEGs
SHARD_SIZE_MAX = 1 << 24
_CLS_MAX_BYTES = 32  # a decimal class index
Progress = Callable[[str], None]


def write_shards(source: str | os.PathLike, out: str | os.PathLike, *, splits: tuple[str, ...] = ("train", "val"),
                 shard_size: int = SHARD_SIZE, progress: Progress = print) -> Path:
    """Write the ImageFolder tree ``source`` as a shard set in ``out`` (absent or empty); returns ``out``.

    Args:
        source: ImageFolder root holding one folder per split, each with the same class folders.
        out: the shard set's folder.
        splits: the split folders to convert.
        shard_size: samples per shard.
        progress: called with one line per shard written.
    """
    if not 1 <= shard_size <= SHARD_SIZE_MAX:
        raise VitreduceError(f"--shard-size is {shard_size}; use 1 to {SHARD_SIZE_MAX} samples per shard")
    source, out = Path(source).expanduser(), Path(out).expanduser()
    scans = {split: _scan(source, split) for split in splits}
    classes = _same_classes(source, scans)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise VitreduceError(f"{out} exists and is not an empty folder; choose a new output folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, out.name)
    try:
        layout = {}
        for split, (_, samples) in scans.items():
            layout[split] = _write_split(tmp, split, samples, shard_size, progress)
        index_shard_set(tmp, layout, classes, tool="vitreduce data shard")
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _scan(source: Path, split: str) -> tuple[list[str], list[tuple[str, int]]]:
    if not (source / split).is_dir():
        raise VitreduceError(f"{source} has no {split}/ folder: pass an ImageFolder root holding "
                             f"{', '.join(f'{s}/' for s in ('train', 'val'))} (or choose --splits)")
    return scan_split(source / split, source)


def _same_classes(source: Path, scans: dict) -> list[str]:
    names = [classes for classes, _ in scans.values()]
    if any(other != names[0] for other in names[1:]):
        raise VitreduceError(f"{source}: the splits {', '.join(scans)} have different class folders; "
                             "every split must have the same classes")
    return names[0]


def _write_split(out: Path, split: str, samples: list[tuple[str, int]], shard_size: int,
                 progress: Progress) -> list[str]:
    names = []
    count = -(-len(samples) // shard_size)
    for number, start in enumerate(range(0, len(samples), shard_size)):
        name = f"{split}-{number:06d}.tar"
        with tarfile.open(out / name, "w", format=tarfile.USTAR_FORMAT) as tar:
            for index in range(start, min(start + shard_size, len(samples))):
                path, target = samples[index]
                key = f"{index:09d}"
                _add(tar, f"{key}.{_extension(path)}", _read_file(path))
                _add(tar, f"{key}.cls", str(target).encode())
        names.append(name)
        done = min(start + shard_size, len(samples))
        progress(f"{split}: wrote {name} ({number + 1}/{count} shards, {done}/{len(samples)} samples)")
    return names


def _extension(path: str) -> str:
    extension = path.rsplit(".", 1)[-1].lower()
    if extension not in IMAGE_EXTENSIONS:
        raise VitreduceError(f"{path}: extension .{extension} has no WebDataset image decoder "
                             f"({', '.join(IMAGE_EXTENSIONS)})")
    return extension


def _read_file(path: str) -> bytes:
    """A regular file's bytes, at most MAX_SAMPLE_BYTES; never opens a FIFO or device for reading."""
    try:
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            info = os.fstat(handle)
            if not stat.S_ISREG(info.st_mode):
                raise VitreduceError(f"{path} is not a regular file (it changed since the folder was scanned)")
            if info.st_size > MAX_SAMPLE_BYTES:
                raise VitreduceError(f"{path} is {info.st_size} bytes, over the limit of {MAX_SAMPLE_BYTES >> 20} "
                                     "MiB per image: shrink or remove it")
            with os.fdopen(os.dup(handle), "rb") as stream:
                return stream.read(MAX_SAMPLE_BYTES + 1)
        finally:
            os.close(handle)
    except OSError as err:
        raise VitreduceError(f"{path} cannot be read ({err.strerror}); nothing was written") from None


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    # Every header field fixed: the same images give the same bytes, whoever writes them and when.
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


# ---------------------------------------------------------------------------------------------------
# Indexing


def index_shard_set(root: Path, layout: dict[str, list[str]], classes: list[str], *, tool: str,
                    progress: Progress | None = None) -> None:
    """Write ``<split>-index.tsv`` per split and then the marker, for the shards ``layout`` names.

    Args:
        root: the folder holding the shards (written into).
        layout: split name -> shard file names in that split's order.
        classes: class names; class index ``i`` (a sample's ``.cls``) is ``classes[i]``.
        tool: recorded in the marker (what wrote the set).
        progress: called with one line per shard indexed.
    """
    splits = {}
    for split, shards in layout.items():
        if not shards:
            raise VitreduceError(f"split {split} has no shard")
        rows, records = [], []
        for number, name in enumerate(shards):
            found = index_tar(Path(root) / name, len(classes))
            rows.extend((name, *row) for row in found)
            records.append({"name": name, "samples": len(found), "bytes": (Path(root) / name).stat().st_size})
            if progress:
                progress(f"{split}: indexed {name} ({number + 1}/{len(shards)}, {len(rows)} samples)")
        index = f"{split}-index.tsv"
        lines = ["\t".join(INDEX_COLUMNS)] + ["\t".join(map(str, row)) for row in rows]
        (Path(root) / index).write_text("\n".join(lines) + "\n", encoding="utf-8")
        splits[split] = {"index": index, "samples": len(rows), "shards": records}
    marker = {"format": FORMAT, "version": VERSION, "tool": tool, "classes": list(classes), "splits": splits}
    (Path(root) / MARKER).write_text(json.dumps(marker, indent=1) + "\n")


def index_tar(path: Path, num_classes: int) -> list[tuple[str, int, int, int, str]]:
    """``(key, class, offset, size, extension)`` of each sample of one tar shard, in member order.

    A sample is the members sharing a key (the name up to the first dot of its last component, as
    WebDataset groups them); it needs one image member and a ``.cls`` member. Other members (``.json``,
    ``.txt``) are ignored. A shard whose members run past its end (truncated) is refused.
    """
    size = path.stat().st_size
    samples: dict[str, dict] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                if member.offset_data + member.size > size:
                    raise VitreduceError(f"{path}: member {member.name} runs past the end of the file: the shard "
                                         "is truncated; copy or write it again")
                _record(samples, member, tar)
    except (tarfile.TarError, EOFError) as err:
        raise VitreduceError(f"{path} is not a readable tar file ({err}): the shard is damaged or truncated") from None
    return [_sample_row(path, key, parts, num_classes) for key, parts in samples.items()]


def _record(samples: dict[str, dict], member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
    folder, _, base = member.name.rpartition("/")
    stem, dot, extension = base.partition(".")
    if not dot:
        return
    parts = samples.setdefault(f"{folder}/{stem}" if folder else stem, {})
    extension = extension.lower()
    if extension == "cls" and member.size <= _CLS_MAX_BYTES:
        parts["cls"] = tar.extractfile(member).read()
    elif extension in IMAGE_EXTENSIONS and "image" not in parts:
        parts["image"] = (member.offset_data, member.size, extension)


def _sample_row(path: Path, key: str, parts: dict, num_classes: int) -> tuple[str, int, int, int, str]:
    if "image" not in parts or "cls" not in parts:
        missing = "an image member" if "image" not in parts else "a .cls member"
        raise VitreduceError(f"{path}: sample {key} has no {missing} (a sample needs <key>.jpg/.png/.webp/... "
                             "and <key>.cls holding its class index)")
    try:
        target = int(parts["cls"].decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        target = -1
    if not 0 <= target < num_classes:
        raise VitreduceError(f"{path}: sample {key} has class {parts['cls'][:_CLS_MAX_BYTES]!r}, not an index "
                             f"in 0..{num_classes - 1} of the {num_classes} class names given")
    if "\t" in key or "\n" in key:
        raise VitreduceError(f"{path}: sample key {key!r} holds a tab or newline; rename it")
    return (key, target, *parts["image"])
