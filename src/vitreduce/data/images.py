"""ImageFolder trees on disk: scanning them, checking them, reading images without hiding bad ones.

- Files are indexed in torchvision's ImageFolder order (sorted class folders, sorted files); an eval
  index is a position in that order (``predictions.csv`` uses it). timm's ImageDataset is not used: it
  sorts classes "naturally" (``class10`` after ``class2``) and silently retries another file when one
  cannot be read.
- Unreadable images (truncated, garbage, empty files) are never replaced: ``ImageFolderSamples`` gives
  None for them and their path, and ``BadImageTracker`` raises once more than ``data.max_bad_fraction``
  of an epoch's samples were unreadable.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageFile
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from vitreduce.data.config import DataConfig
from vitreduce.data.sampling import seeded_rngs
from vitreduce.errors import VitreduceError

# What PIL raises for a file it cannot decode: OSError (unidentified, truncated, missing), SyntaxError
# (broken PNG chunks), ValueError (bad header fields), DecompressionBombError (absurd dimensions).
_UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class BadImageTracker:
    """Counts unreadable images over one epoch and raises once they exceed the allowed fraction.

    The loaders use one internally; it is public for callers that carry the count across a resume.

    Args:
        max_bad_fraction: allowed fraction of ``total`` (``data.max_bad_fraction``).
        total: samples in the epoch (``TrainLoader.samples_per_epoch``, ``EvalLoader.num_samples``).
    """

    def __init__(self, max_bad_fraction: float, total: int):
        self.max_bad_fraction, self.total = max_bad_fraction, total
        self.paths: list[str] = []

    def add(self, bad_paths: list[str]) -> None:
        """Record unreadable files; raise VitreduceError once more than the allowed fraction are bad."""
        self.paths.extend(bad_paths)
        if len(self.paths) > self.max_bad_fraction * self.total:
            shown = ", ".join(self.paths[:5]) + (", ..." if len(self.paths) > 5 else "")
            raise VitreduceError(
                f"{len(self.paths)} of {self.total} images in this epoch could not be read, more than "
                f"data.max_bad_fraction={self.max_bad_fraction}: {shown}. Repair or delete them, "
                "or raise data.max_bad_fraction"
            )


def check_dataset(data: DataConfig, num_classes: int | None) -> int:
    """Refuse a dataset the loaders could not use, before any work starts; return its number of classes.

    Args:
        data: the data config; ``root`` must hold ``train_split`` and ``val_split`` ImageFolder trees
            with the same class folder names, none of them empty.
        num_classes: the model's number of classes, or None to skip that comparison.
    """
    root = Path(data.root).expanduser()
    if not root.is_dir():
        raise VitreduceError(f"data.root {root} is not a folder; set data.root to an ImageFolder root")
    classes = {split: scan_split(split_dir(data, split))[0] for split in (data.train_split, data.val_split)}
    train, val = classes[data.train_split], classes[data.val_split]
    if train != val:
        only_train, only_val = sorted(set(train) - set(val))[:5], sorted(set(val) - set(train))[:5]
        raise VitreduceError(
            f"{root}: the {data.train_split}/ and {data.val_split}/ class folders differ "
            f"(only in {data.train_split}: {only_train}, only in {data.val_split}: {only_val})"
        )
    if num_classes is not None and num_classes != len(train):
        raise VitreduceError(
            f"the data has {len(train)} classes, the model {num_classes}: set model.num_classes={len(train)}"
        )
    return len(train)


def split_dir(data: DataConfig, split: str) -> Path:
    """The folder of one split; VitreduceError naming the settings to check when it is missing."""
    path = Path(data.root).expanduser() / split
    if not path.is_dir():
        raise VitreduceError(f"{path} is not a folder: check data.root and the split names (data.*_split)")
    return path


def scan_split(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names and (path, class index) pairs in ImageFolder order."""
    try:
        classes, class_to_idx = find_classes(str(folder))
        samples = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as err:  # torchvision's message names the empty class folders
        raise VitreduceError(f"{folder} is not a usable ImageFolder tree: {err}") from None
    return classes, samples


def refuse_gray_fill() -> None:
    """Refuse to load while PIL would gray-fill truncated images instead of failing on them."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise VitreduceError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by some imported code): truncated images "
            "would be gray-filled instead of reported. Set it back to False"
        )


def load_rgb(path: str) -> Image.Image | None:
    """The decoded RGB image, or None when the file cannot be read or fully decoded."""
    try:
        with open(path, "rb") as handle, Image.open(handle) as image:
            return image.convert("RGB")  # decodes every pixel, so truncation is detected here
    except _UNREADABLE:
        return None  # the caller reports the path


class ImageFolderSamples(Dataset):
    """ImageFolder samples, loaded by key ``(index, sample_seed)`` with every RNG seeded from the seed.

    An item is ``(image, target, index, path)``; ``image`` is None when the file cannot be read.

    Args:
        folder: one split's folder, with one subfolder per class.
        transform: applied to each decoded RGB image.
    """

    def __init__(self, folder: Path, transform):
        self.classes, self.samples = scan_split(folder)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]):
        index, sample_seed = key
        path, target = self.samples[index]
        with seeded_rngs(sample_seed):
            image = load_rgb(path)
            if image is None:
                return None, target, index, path
            return self.transform(image), target, index, path
