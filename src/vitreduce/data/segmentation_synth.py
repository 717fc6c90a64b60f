"""The built-in segmentation dataset: ``vitreduce data synth OUT --segmentation`` writes textured-object
scenes (``data.scenes``) with their exact masks in the ADE20K layout, so the segmentation probe runs with
nothing to download.

OUT/images/{training,validation}/NNNNN.png (RGB; lossless, so a pixel is exactly what was drawn),
OUT/annotations/{training,validation}/NNNNN.png (one byte per pixel: the class index, 0 the background)
and OUT/vitreduce_synth.json, the marker that records the parameters and the class names (read by the
probe, ``segmentation.dataset_classes``). The same seed gives byte-identical files.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from vitreduce.config_tree import SEED_MAX
from vitreduce.data.scenes import BACKGROUND, TEXTURES, render_scenes
from vitreduce.data.segmentation import ANNOTATIONS, IGNORE_INDEX, IMAGES, SPLITS
from vitreduce.data.synth import MARKER, MAX_SIZE, _check_target, _rename_into
from vitreduce.errors import VitreduceError
from vitreduce.files import make_temp_dir

GENERATOR_VERSION = 1  # bump when a change alters the scenes a seed produces
CLASSES, TRAIN_IMAGES, VAL_IMAGES, SIZE = 5, 200, 50, 32
MAX_IMAGES = 100_000
_CHUNK = 64  # scenes drawn at once: bounds memory at large sizes


def segmentation_class_names(classes: int = CLASSES) -> list[str]:
    """The label names, background first: ``background``, ``stripes_h``, ..."""
    return [BACKGROUND, *(name for name, _ in TEXTURES[: classes - 1])]


def _check(seed: int, classes: int, train_images: int, val_images: int, size: int) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= SEED_MAX:
        raise VitreduceError(f"--seed is {seed!r}; use an integer from 0 to {SEED_MAX}")
    if not 2 <= classes <= len(TEXTURES) + 1:
        raise VitreduceError(f"--classes is {classes}; use 2 to {len(TEXTURES) + 1} for segmentation (the "
                             f"background and one class per texture)")
    if not 8 <= size <= MAX_SIZE:
        raise VitreduceError(f"--size is {size}; use 8 to {MAX_SIZE} pixels")
    for flag, count in (("--train-images", train_images), ("--val-images", val_images)):
        if not 1 <= count <= MAX_IMAGES:
            raise VitreduceError(f"{flag} is {count}; use 1 to {MAX_IMAGES}")


def write_segmentation_dataset(out_dir: str | os.PathLike, seed: int = 0, classes: int = CLASSES,
                               train_images: int = TRAIN_IMAGES, val_images: int = VAL_IMAGES,
                               size: int = SIZE) -> Path:
    """Write the scenes in the ADE20K layout (module docstring), built beside OUT and renamed into place.

    Args:
        out_dir: target directory, absent or empty.
        seed: the same seed gives byte-identical files.
        classes: labels including the background, 2 to 7.
        train_images, val_images: scenes per split.
        size: image side in pixels.
    """
    _check(seed, classes, train_images, val_images, size)
    out = Path(out_dir)
    _check_target(out, overwrite=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, out.name)
    try:
        for split, count in zip(SPLITS, (train_images, val_images), strict=True):
            _write_split(tmp, split, seed, count, size, classes)
        marker = {"tool": "vitreduce data synth --segmentation", "task": "segmentation",
                  "generator_version": GENERATOR_VERSION, "seed": seed, "size": size,
                  "classes": segmentation_class_names(classes), "reduce_zero_label": False,
                  "ignore_index": IGNORE_INDEX, "train_images": train_images, "val_images": val_images}
        text = json.dumps(marker, indent=2) + "\n"
        (tmp / MARKER).write_text(text)
        _rename_into(tmp, out, text)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_split(root: Path, split: str, seed: int, count: int, size: int, classes: int) -> None:
    images, masks = root / IMAGES / split, root / ANNOTATIONS / split
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    rng = np.random.default_rng([seed, SPLITS.index(split), GENERATOR_VERSION, 26])
    for start in range(0, count, _CHUNK):
        pixels, labels = render_scenes(rng, min(_CHUNK, count - start), size, classes)
        for offset, (image, mask) in enumerate(zip(pixels, labels, strict=True)):
            Image.fromarray(image).save(images / f"{start + offset:05d}.png", format="PNG")
            Image.fromarray(mask, mode="L").save(masks / f"{start + offset:05d}.png", format="PNG")
