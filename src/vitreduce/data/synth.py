"""A procedurally generated image-classification dataset, so examples and tests need no download.

Each class is a shape or texture family (stripes at a class-specific angle, checkerboards, rings,
discs, crosses, ...) drawn at a random position, scale, rotation and phase. Foreground and
background colours are drawn from the same distribution for every class, so the mean colour of an
image says nothing about its class: only spatial structure does. Pixel noise, line distractors
and textures clipped to random windows keep a tiny ViT well below 100%.

`generate` makes images in memory; `write_synth_dataset` writes them as an ImageFolder tree
(`OUT/train/<class>/*.png`, `OUT/val/<class>/*.png`) plus a marker file recording the parameters.
The same seed gives byte-identical files.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from vitreduce.config_tree import SEED_MAX, Whole, kwargs_from
from vitreduce.data.shapes import FAMILIES, Array, render
from vitreduce.errors import VitreduceError
from vitreduce.files import make_temp_dir

# Bump when a change alters the images a seed produces; recorded in the marker file.
GENERATOR_VERSION = 1
MARKER = "vitreduce_synth.json"
SPLITS = ("train", "val")
# Defaults of `write_synth_dataset` and `vitreduce data synth`: 6,000 32x32 images in a few seconds.
CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, SIZE = 10, 500, 100, 32
MAX_SIZE, MAX_PER_CLASS = 1024, 100_000  # bounds of the image side and of images per class and split
# A config's synth: section generates data.root only when its last folder name starts with this (data/synth,
# data/synth-demo): a mistyped path to real data must stop the run, not train it on made-up images.
SYNTH_PREFIX = "synth"
# Pixels per generation chunk: bounds memory at large sizes (16 MiB per float64 array).
_CHUNK_ELEMENTS = 1 << 21

def class_names(classes: int = CLASSES) -> list[str]:
    """Folder names of the first `classes` families, e.g. `c0_stripes_h`; sorted order = label order."""
    _check(classes=classes)
    return [f"c{i}_{name}" for i, (name, _) in enumerate(FAMILIES[:classes])]


def _check(classes: int = CLASSES, size: int = SIZE, **counts: int) -> None:
    if not 2 <= classes <= len(FAMILIES):
        raise VitreduceError(f"--classes is {classes}; use 2 to {len(FAMILIES)} (one per shape family)")
    if not 8 <= size <= MAX_SIZE:
        raise VitreduceError(f"--size is {size}; use 8 to {MAX_SIZE} pixels")
    for name, count in counts.items():
        if not 1 <= count <= MAX_PER_CLASS:
            raise VitreduceError(f"--{name.replace('_', '-')} is {count}; use 1 to {MAX_PER_CLASS}")


def _iter_class(seed: int, split: str, label: int, count: int, size: int) -> Iterator[Array]:
    """The images of one class and split, in chunks; their own RNG stream, so classes are independent."""
    rng = np.random.default_rng([seed, SPLITS.index(split), label, GENERATOR_VERSION])
    chunk = max(1, _CHUNK_ELEMENTS // (size * size))
    for start in range(0, count, chunk):
        yield render(rng, FAMILIES[label][1], min(chunk, count - start), size)


def generate(
    per_class: int, seed: int = 0, classes: int = CLASSES, size: int = SIZE, split: str = "train"
) -> tuple[Array, Array]:
    """Images and labels in memory, identical to what `write_synth_dataset` writes for that split.

    Args:
        per_class: images per class.
        seed: non-negative integer; the same seed gives the same images.
        classes: number of classes (shape families), 2 to `len(FAMILIES)`.
        size: image side in pixels, at least 8.
        split: "train" or "val"; the splits use different random streams.

    Returns:
        images uint8 (N, size, size, 3) and labels int64 (N,), class-major, N = classes * per_class.
    """
    _check_seed(seed)
    _check(classes, size, per_class=per_class)
    if split not in SPLITS:
        raise VitreduceError(f"split is {split!r}; use one of {SPLITS}")
    images = [c for label in range(classes) for c in _iter_class(seed, split, label, per_class, size)]
    return np.concatenate(images), np.repeat(np.arange(classes, dtype=np.int64), per_class)


def _check_seed(seed: int) -> None:
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or not 0 <= seed <= SEED_MAX:
        raise VitreduceError(f"--seed is {seed!r}; use an integer from 0 to {SEED_MAX}")


def write_synth_dataset(
    out_dir: str | os.PathLike,
    seed: int = 0,
    classes: int = CLASSES,
    train_per_class: int = TRAIN_PER_CLASS,
    val_per_class: int = VAL_PER_CLASS,
    size: int = SIZE,
    overwrite: bool = False,
) -> Path:
    """Write the dataset as an ImageFolder tree: OUT/{train,val}/<class>/NNNNN.png plus OUT/vitreduce_synth.json.

    Everything is written to a temporary directory beside OUT and renamed into place at the end, so
    a crash never leaves a dataset that looks complete (the marker file is moved in last).

    Args:
        out_dir: target directory; must be absent or empty unless `overwrite`.
        seed: non-negative integer; the same seed gives byte-identical files.
        classes: number of classes, 2 to `len(FAMILIES)`.
        train_per_class: training images per class.
        val_per_class: validation images per class.
        size: image side in pixels, at least 8.
        overwrite: replace train/, val/ and the marker of a dataset this function wrote before;
            other files in OUT are left alone.

    Returns:
        The dataset root, OUT.

    Raises:
        VitreduceError: bad arguments, or OUT holds files this tool did not write; nothing is written.
    """
    _check_seed(seed)
    _check(classes, size, train_per_class=train_per_class, val_per_class=val_per_class)
    out = Path(out_dir)
    replace = _check_target(out, overwrite)
    names = class_names(classes)
    counts = {"train": train_per_class, "val": val_per_class}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, out.name)  # renamed to OUT: the umask's mode, not mkdtemp's 0700
    try:
        for split, count in counts.items():
            for label, name in enumerate(names):
                _write_class(tmp / split / name, seed, split, label, count, size)
        marker = {
            "tool": "vitreduce data synth",
            "generator_version": GENERATOR_VERSION,
            "seed": int(seed),
            "size": size,
            "classes": names,
            "train_per_class": train_per_class,
            "val_per_class": val_per_class,
        }
        text = json.dumps(marker, indent=2) + "\n"
        (tmp / MARKER).write_text(text)
        if replace:
            _swap_in(tmp, out)
        else:
            _rename_into(tmp, out, text)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_class(folder: Path, seed: int, split: str, label: int, count: int, size: int) -> None:
    folder.mkdir(parents=True)
    index = 0
    for chunk in _iter_class(seed, split, label, count, size):
        for img in chunk:
            Image.fromarray(img).save(folder / f"{index:05d}.png", format="PNG")
            index += 1


def _rename_into(tmp: Path, out: Path, marker_text: str) -> None:
    """Rename tmp to OUT (absent or an empty directory) in one atomic step."""
    try:
        os.replace(tmp, out)
    except OSError as err:
        # Parallel runs of a study may generate the same data.root at once. Files are a pure
        # function of the marker's parameters, so an identical marker means an identical dataset.
        marker = out / MARKER
        if marker.is_file() and marker.read_text() == marker_text:
            return
        raise VitreduceError(f"{out} was filled by something else while the dataset was written ({err})") from err


def _check_target(out: Path, overwrite: bool) -> bool:
    """Refuse a target holding anything this tool did not write; True if an old dataset gets replaced."""
    if out.exists() and not out.is_dir():
        raise VitreduceError(f"{out} exists and is not a directory; choose another output path")
    if not out.exists() or not any(out.iterdir()):
        return False
    if not overwrite:
        raise VitreduceError(f"{out} exists and is not empty; choose a new directory or pass --overwrite")
    marker_path = out / MARKER
    if not marker_path.is_file():
        raise VitreduceError(
            f"{out} is not empty and has no {MARKER}, so it was not written by `vitreduce data synth`; "
            "--overwrite only replaces such datasets: choose a new directory"
        )
    old_classes = set(_read_marker(out)["classes"])
    # Never delete what we did not write: every file under train/ and val/ must be one of our images.
    for split in SPLITS:
        for path in (out / split).rglob("*") if (out / split).is_dir() else ():
            rel = path.relative_to(out / split)
            ours = rel.parts[0] in old_classes and (
                path.is_dir() if len(rel.parts) == 1 else len(rel.parts) == 2 and path.suffix == ".png"
            )
            if not ours:
                raise VitreduceError(f"{path} was not written by `vitreduce data synth`; move it out of {out}")
    return True


def _swap_in(new: Path, out: Path) -> None:
    """Replace OUT's marker, train/ and val/ with those in `new`; the marker goes first and comes back last."""
    (out / MARKER).unlink()
    trash = make_temp_dir(out.parent, out.name, suffix=".old")
    try:
        for split in SPLITS:
            if (out / split).exists():
                os.replace(out / split, trash / split)
            os.replace(new / split, out / split)
        os.replace(new / MARKER, out / MARKER)
    finally:
        shutil.rmtree(trash, ignore_errors=True)


class SynthConfig(BaseModel):
    """The ``synth:`` section of a train config: generate data.root with this module when it does not exist
    and its last folder name starts with ``synth`` (``check_synth_root``)."""

    model_config = ConfigDict(extra="forbid")  # the same bounds as `vitreduce data synth` (_check)

    seed: Whole = Field(0, ge=0, le=SEED_MAX)
    classes: Whole = Field(10, ge=2, le=len(FAMILIES))
    train_per_class: Whole = Field(500, ge=1, le=MAX_PER_CLASS)
    val_per_class: Whole = Field(100, ge=1, le=MAX_PER_CLASS)
    size: Whole = Field(32, ge=8, le=MAX_SIZE)


def check_synth_root(root: Path) -> None:
    """Refuse to generate into a missing ``root`` whose name does not say it is the synthetic dataset."""
    if not root.exists() and not root.name.startswith(SYNTH_PREFIX):
        raise VitreduceError(
            f"data.root {root} does not exist. The synth: section generates the built-in dataset only into a "
            f"folder whose name starts with '{SYNTH_PREFIX}' (e.g. data/synth), so that a mistyped path never "
            f"trains on made-up images: correct data.root (--set data.root=PATH), or name the folder "
            f"{SYNTH_PREFIX}-... to generate the dataset there")


def ensure_synth(root: Path, synth: SynthConfig) -> None:
    """Generate the built-in dataset at ``root`` if missing and named ``synth*``; refuse one generated with
    other settings, and any other missing root (``check_synth_root``)."""
    check_synth_root(root)
    if not root.exists():
        print(f"data.root {root} does not exist: generating the built-in dataset there ({synth})")
        write_synth_dataset(root, **_wanted(synth))
        return
    check_synth_marker(root, synth)


def _wanted(synth: SynthConfig) -> dict:
    return kwargs_from(synth, "seed", "classes", "size", "train_per_class", "val_per_class")


def check_synth_marker(root: Path, synth: SynthConfig) -> None:
    """Refuse a built-in dataset at ``root`` generated with other settings than ``synth`` asks for (reads only:
    a study checks it before it writes anything)."""
    wanted = _wanted(synth)
    if (root / MARKER).is_file():
        marker = _read_marker(root)
        found = {**{k: marker.get(k) for k in wanted}, "classes": len(marker.get("classes", []))}
        if found != wanted:
            raise VitreduceError(f"data.root {root} holds a synthetic dataset made with {found}, the config's synth "
                                 f"section asks for {wanted}: delete that folder or point data.root elsewhere")


def _read_marker(folder: Path) -> dict:
    path = folder / MARKER
    try:
        marker = json.loads(path.read_text())
        if isinstance(marker, dict) and isinstance(marker.get("classes"), list):
            return marker
    except (ValueError, OSError) as err:
        raise VitreduceError(f"{path} is unreadable ({err}); delete {folder} or point data.root elsewhere") from None
    raise VitreduceError(f"{path} is not a marker written by vitreduce; delete {folder} or point data.root elsewhere")
