"""Semantic-segmentation data in the ADE20K layout, read with the same safety rules as classification data.

    ROOT/images/training/*.jpg        ROOT/annotations/training/*.png
    ROOT/images/validation/*.jpg      ROOT/annotations/validation/*.png

An image and its mask share a file stem; the mask holds one class index per pixel (an 8-bit grayscale
or palette PNG, as ADE20K's). ``IGNORE_INDEX`` (255) is never scored. With ``reduce_zero_label``
(ADE20K's convention, where 0 is "other": use it for the real ADE20K) label 0 becomes ignored and every
other label k becomes k - 1. A dataset written by ``vitreduce data synth --segmentation`` says its class
names and convention in its marker file.

The file rules are classification's (``images``): only regular files are read, a link must resolve inside
the dataset root, images are decoded by ``images.read_rgb`` (bounded by Pillow's decompression-bomb
limit); what is skipped is named in a warning. Before any work: every image must have its mask, and a
mask's size must equal its image's (checked from the file headers, one error naming each mismatch).
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from vitreduce.data.images import _Scan
from vitreduce.data.pixels import _UNREADABLE, _nonblocking, read_rgb
from vitreduce.data.pixels import kind_of as _kind
from vitreduce.data.synth import MARKER
from vitreduce.errors import VitreduceError

IMAGES, ANNOTATIONS = "images", "annotations"
SPLITS = ("training", "validation")
IGNORE_INDEX = 255
_MASK_MODES = ("L", "P")
_LISTED = 5


def dataset_classes(root: Path, classes: int | None, reduce_zero_label: bool | None) -> tuple[list[str], bool]:
    """(class names, reduce_zero_label): the marker's for a built-in dataset, else from the options.

    Args:
        root: the dataset root.
        classes: the number of classes scored (e.g. 150 for ADE20K); None: the marker's.
        reduce_zero_label: None: the marker's (False without a marker).
    """
    marker = root / MARKER
    names = None
    if marker.is_file():
        try:
            found = json.loads(marker.read_text())
            names = found["classes"] if found.get("task") == "segmentation" else None
            if reduce_zero_label is None:
                reduce_zero_label = found.get("reduce_zero_label", False)
        except (ValueError, OSError, KeyError, AttributeError) as err:
            raise VitreduceError(f"{marker} is unreadable ({err}); delete it or regenerate the dataset") from None
    if classes is None and names is None:
        raise VitreduceError(f"{root} has no {MARKER} naming its classes: pass --classes N (150 for ADE20K, with "
                             "--reduce-zero-label)")
    if classes is not None and not 2 <= classes <= IGNORE_INDEX:
        raise VitreduceError(f"--classes is {classes}; use 2 to {IGNORE_INDEX}")
    if names is None or (classes is not None and classes != len(names)):
        names = [f"class{k}" for k in range(classes)]
    return names, bool(reduce_zero_label)


def scan_pairs(root: Path, split: str) -> list[tuple[str, str]]:
    """(image, mask) paths of one split, sorted by file stem; refuses a missing folder, an image without
    its mask and a mask whose size differs from its image's, naming them."""
    folders = [root / kind / split for kind in (IMAGES, ANNOTATIONS)]
    for folder in folders:
        if not folder.is_dir():
            raise VitreduceError(f"{root} has no {folder.relative_to(root)}/ folder; a segmentation dataset has "
                                 f"{IMAGES}/{{{','.join(SPLITS)}}}/ and {ANNOTATIONS}/{{{','.join(SPLITS)}}}/")
    images = _files(folders[0], root, IMG_EXTENSIONS)
    masks = _files(folders[1], root, (".png",))
    missing = sorted(set(images) - set(masks))
    if missing:
        raise VitreduceError(f"{len(missing)} images in {folders[0]} have no mask {folders[1]}/<name>.png: "
                             f"{', '.join(missing[:_LISTED])}")
    if not images:
        raise VitreduceError(f"{folders[0]} holds no image file (image files end in {', '.join(IMG_EXTENSIONS)})")
    pairs = [(images[stem], masks[stem]) for stem in sorted(images)]
    _check_sizes(pairs)
    return pairs


def _files(folder: Path, root: Path, suffixes: tuple[str, ...]) -> dict[str, str]:
    """{stem: path} of the usable files in one folder (``images._Scan``'s rules; what it skips is warned)."""
    scan = _Scan(folder, root)
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError as err:
        raise VitreduceError(f"cannot list {folder}: {err.strerror}") from None
    found = {}
    for entry in entries:
        if entry.name.lower().endswith(suffixes) and scan._usable(entry):
            stem = entry.name.rsplit(".", 1)[0]
            if stem in found:
                raise VitreduceError(f"{folder} has two files named {stem}.*: keep one image per name")
            found[stem] = entry.path
    scan.warn()
    return found


def _header_size(path: str) -> tuple[int, int]:
    try:
        with Image.open(path) as image:  # reads the header only
            return image.size
    except _UNREADABLE:
        raise VitreduceError(f"{path} cannot be read as an image; replace or remove it") from None


def _check_sizes(pairs: list[tuple[str, str]]) -> None:
    wrong = [(i, m, _header_size(i), _header_size(m)) for i, m in pairs]
    wrong = [w for w in wrong if w[2] != w[3]]
    if wrong:
        shown = "; ".join(f"{m} is {ms[0]}x{ms[1]}, its image {i} {s[0]}x{s[1]}" for i, m, s, ms in wrong[:_LISTED])
        raise VitreduceError(f"{len(wrong)} masks differ in size from their image ({shown}): a mask must have "
                             "one label per image pixel; fix or remove those files")


def read_mask(path: str) -> np.ndarray:
    """The class indices (H, W) uint8 of a mask file: a regular 8-bit grayscale or palette PNG."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise VitreduceError(f"mask {path} is {_kind(mode)}, not a regular file")
        with open(path, "rb", opener=_nonblocking) as handle, Image.open(handle) as image:
            if image.mode not in _MASK_MODES:
                raise VitreduceError(f"mask {path} has pixel mode {image.mode}; save class indices as an 8-bit "
                                     "grayscale (L) or palette (P) PNG")
            return np.array(image)  # (H, W) uint8; a palette image gives its indices
    except _UNREADABLE:
        raise VitreduceError(f"mask {path} cannot be decoded; replace it") from None


class SegmentationSamples(Dataset):
    """(image (3, S, S) float normalised, mask int64) pairs, the image at the model's input size.

    Images are resized bilinearly to ``size``; masks by nearest neighbour to the same size for training,
    or kept at their own size with ``full_masks`` (evaluation scores every labelled pixel of the file).
    Nothing changes for files that already have that size, as the built-in data at the model's size.
    Labels at or above ``classes`` other than IGNORE_INDEX are refused, naming the file.
    """

    def __init__(self, pairs: list[tuple[str, str]], size: tuple[int, int], mean, std, classes: int,
                 reduce_zero_label: bool, full_masks: bool = False):
        self.pairs, self.size, self.classes, self.reduce = pairs, size, classes, reduce_zero_label
        self.full_masks = full_masks
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.pairs[index]
        image, problem = read_rgb(image_path)
        if image is None:
            raise VitreduceError(f"cannot use image {problem}; replace or remove it and its mask")
        mask = Image.fromarray(self._labels(read_mask(mask_path), mask_path))
        wh = (self.size[1], self.size[0])
        if image.size != wh:
            image = image.resize(wh, Image.BILINEAR)
            mask = mask if self.full_masks else mask.resize(wh, Image.NEAREST)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)  # (3, H, W)
        return (pixels - self.mean) / self.std, torch.from_numpy(np.asarray(mask, dtype=np.int64).copy())

    def _labels(self, mask: np.ndarray, path: str) -> np.ndarray:
        if self.reduce:  # ADE20K: 0 ("other") is not scored, class k is k - 1
            mask = np.where(mask == 0, IGNORE_INDEX, mask.astype(np.int64) - 1).astype(np.uint8)
        bad = (mask >= self.classes) & (mask != IGNORE_INDEX)
        if bad.any():
            raise VitreduceError(f"mask {path} has label {int(mask[bad].max())}, but {self.classes} classes are "
                                 f"scored (0..{self.classes - 1}, {IGNORE_INDEX} ignored); check --classes and "
                                 "--reduce-zero-label")
        return mask
