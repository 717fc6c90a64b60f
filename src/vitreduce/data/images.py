"""ImageFolder trees on disk: scanning them, checking them, reading images without hiding bad ones.

- Files are indexed in torchvision's ImageFolder order (sorted class folders, then the folders under a
  class sorted by path, the files in each sorted by name); an eval index is a position in that order
  (``predictions.csv`` uses it). timm's ImageDataset is not used: it sorts classes "naturally"
  (``class10`` after ``class2``) and silently retries another file when one cannot be read.
- What a scan counts (``scan_split``), so that no file is read twice, under another label, from outside
  the dataset, or at all when it is not a regular file:

  - a class folder is a folder directly in the split folder, or a link to a folder inside the split
    folder; a link leading outside the split folder, or back to it, is skipped (and a link to another
    class adds nothing: those images count under their own class);
  - below the class folders, links to folders are never followed: a link can neither loop nor carry
    another class's (or split's) images in under this label;
  - a link to a file counts only when it resolves inside the dataset root (``data.root``; or inside the
    split folder's own location when that folder is itself a link) and to a regular file; with
    ``data.follow_links: true`` (``--follow-links``) a link to a regular file anywhere counts, for a
    subset made of links into another dataset (without it, a split whose class folders hold only such
    links is refused, naming them and the setting);
  - only regular files are read: a FIFO, socket or device named like an image is skipped, never opened;
  - each real file counts once: a link to a file that is also in the split under its own name, or that
    an earlier link already brought in, is skipped.

  What is skipped is named in one warning per scan. A tree without links is scanned exactly as
  torchvision's ImageFolder scans it.
- Pixel modes: 8-bit modes (1, L, LA, P, PA, RGB, RGBA, RGBa, RGBX, CMYK, YCbCr) are converted to RGB by
  Pillow, alpha dropped. High-bit-depth grayscale is scaled to 8 bits, never clipped: 16-bit modes
  (I;16, I;16L, I;16B, I;16N) and 32-bit integers (mode I) within 0..65535 by 1/257, 32-bit floats (mode
  F) within [0, 1] by 255. An I image outside 0..65535, an F image outside [0, 1] or not finite, and any
  other mode (LAB, HSV, ...) is refused: reported like an unreadable image, with its mode. Training,
  evaluation and the sharpness batches all read through ``read_rgb``.
- Unreadable images (truncated, garbage, empty files, refused modes) are never replaced:
  ``ImageFolderSamples`` gives None for them and what went wrong, and ``BadImageTracker`` raises once
  more than ``data.max_bad_fraction`` of an epoch's samples were unreadable.
"""
from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import NamedTuple

from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from vitreduce.data.config import DataConfig
from vitreduce.data.pixels import kind_of, read_rgb
from vitreduce.data.sampling import seeded_rngs
from vitreduce.errors import VitreduceError


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
    classes = {split: scan_split(split_dir(data, split), root, data.follow_links)[0]
               for split in (data.train_split, data.val_split)}
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


def class_folder_names(data: DataConfig) -> list[str]:
    """The training split's class names as the loaders number them (``scan_split``'s rules for class
    folders), from one listing: no image file is scanned."""
    return _Scan(split_dir(data, data.train_split), Path(data.root).expanduser(), data.follow_links).class_folders()


def split_dir(data: DataConfig, split: str) -> Path:
    """The folder of one split; VitreduceError naming the settings to check when it is missing."""
    path = Path(data.root).expanduser() / split
    if not path.is_dir():
        key = "data.train_split" if split == data.train_split else "data.val_split"
        raise VitreduceError(f"{path} is not a folder ({folders_in(path.parent)}): check data.root and {key}")
    return path


def folders_in(root: Path) -> str:
    """What a dataset root holds, for a message: ``data/x holds train/, val/`` (or that it is missing)."""
    if not root.is_dir():
        return f"{root} does not exist"
    names = sorted(entry.name + "/" for entry in root.iterdir() if entry.is_dir())
    return f"{root} holds " + (", ".join(names[:12]) if names else "no folders")


def split_samples(data: DataConfig, split: str, transform) -> ImageFolderSamples:
    """The samples of one split of ``data.root`` (the loaders' dataset), read through ``transform``."""
    return ImageFolderSamples(split_dir(data, split), transform, root=Path(data.root).expanduser(),
                              follow_links=data.follow_links)


# ---------------------------------------------------------------------------------------------------
# Scanning (the rules are in the module docstring)


class _Found(NamedTuple):
    path: str  # as torchvision spells it: the split folder joined with the names below it
    target: int  # class index
    link: str | None  # the real file a link to a file reads; None for a file that is not a link


class _Scan:
    """One scan of a split folder; ``skipped`` collects (path, why) for everything the rules leave out."""

    def __init__(self, folder: Path, root: Path | None, follow_links: bool = False):
        self.folder = os.path.expanduser(str(folder))
        self.follow_links = follow_links
        self.outside: list[tuple[str, str]] = []  # (link, target) of links to files outside the root, skipped
        self.real_split = os.path.realpath(self.folder)
        self.real_root = os.path.realpath(os.path.expanduser(str(root))) if root is not None else self.real_split
        self.classes: list[tuple[str, str, bool]] = []  # (class folder, its real path, whether it is a link)
        self.skipped: list[tuple[str, str]] = []

    def class_folders(self) -> list[str]:
        """The class names, sorted; each class folder is recorded in ``classes``."""
        try:
            with os.scandir(self.folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as err:
            raise VitreduceError(f"cannot list {self.folder}: {err.strerror}") from None
        names = []
        for entry in entries:
            linked = entry.is_symlink()
            if not _is_dir(entry, follow=linked):
                continue
            real = os.path.realpath(entry.path)
            if linked and (real == self.real_split or not _inside(real, self.real_split)):
                self.skipped.append((entry.path, f"a link to the folder {real}, not inside {self.folder}"))
                continue
            names.append(entry.name)
            self.classes.append((entry.path, real, linked))
        return names

    def class_files(self, target: int) -> list[_Found]:
        """The image files under one class folder, in ImageFolder order."""
        class_dir = self.classes[target][0]
        found = []
        for _, entries in self._walk(class_dir):
            for entry in entries:
                if entry.name.lower().endswith(IMG_EXTENSIONS) and self._usable(entry):
                    link = os.path.realpath(entry.path) if entry.is_symlink() else None
                    found.append(_Found(entry.path, target, link))
        return found

    def _walk(self, top: str) -> list[tuple[str, list[os.DirEntry]]]:
        """(folder, its non-folder entries sorted by name) for ``top`` and every real folder below it,
        sorted by folder path as torchvision's ``sorted(os.walk(top))``; links to folders are skipped."""
        listing, pending = [], [top]
        while pending:
            dirpath = pending.pop()
            try:
                with os.scandir(dirpath) as it:
                    entries = sorted(it, key=lambda entry: entry.name)
            except OSError as err:
                self.skipped.append((dirpath, f"cannot be listed: {err.strerror}"))
                continue
            files = []
            for entry in entries:
                if _is_dir(entry, follow=False):
                    pending.append(entry.path)
                elif entry.is_symlink() and _is_dir(entry, follow=True):
                    self.skipped.append((entry.path, "a link to a folder, not followed below a class folder"))
                else:
                    files.append(entry)
            listing.append((dirpath, files))
        return sorted(listing, key=lambda item: item[0])

    def _usable(self, entry: os.DirEntry) -> bool:
        """Whether a file entry may be read: a regular file, or a link inside the root to one."""
        try:
            if entry.is_file(follow_symlinks=False):
                return True  # no system call: the folder listing said so
            if not entry.is_symlink():
                mode = entry.stat(follow_symlinks=False).st_mode
                self.skipped.append((entry.path, f"{kind_of(mode)}, not a regular file"))
                return False
            real = os.path.realpath(entry.path)
            if not (self.follow_links or _inside(real, self.real_root) or _inside(real, self.real_split)):
                self.skipped.append((entry.path, f"a link to {real}, outside the dataset root {self.real_root}"))
                self.outside.append((entry.path, real))
                return False
            mode = os.stat(real).st_mode
        except OSError as err:
            self.skipped.append((entry.path, f"cannot be read: {err.strerror}"))
            return False
        if not stat.S_ISREG(mode):
            self.skipped.append((entry.path, f"a link to {kind_of(mode)}, not a regular file"))
        return stat.S_ISREG(mode)

    def count_once(self, found: list[_Found]) -> list[tuple[str, int]]:
        """(path, class index) pairs, each real file once: where it lies in the split, else its first link."""
        if not any(self._linked(item) for item in found):
            return [(item.path, item.target) for item in found]  # the usual tree: nothing to compare
        direct = {self._real(item) for item in found if not self._linked(item)}
        taken: set[str] = set()
        samples = []
        for item in found:
            if self._linked(item):
                real = self._real(item)
                if real in direct or real in taken:
                    self.skipped.append((item.path, f"{real} is already counted"))
                    continue
                taken.add(real)
            samples.append((item.path, item.target))
        return samples

    def _linked(self, item: _Found) -> bool:
        return item.link is not None or self.classes[item.target][2]

    def _real(self, item: _Found) -> str:
        if item.link is not None:
            return item.link
        class_dir, real_class, _ = self.classes[item.target]
        return real_class + item.path[len(class_dir):]  # no folder link is followed below a class folder

    def warn(self) -> None:
        if self.skipped:
            shown = "; ".join(f"{path} ({why})" for path, why in self.skipped[:5])
            more = f"; and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            hint = (" (data.follow_links: true, or --follow-links, reads links to files outside the root)"
                    if self.outside else "")
            warnings.warn(f"{self.folder}: skipped {len(self.skipped)} entries (see vitreduce.data.images): "
                          f"{shown}{more}{hint}", stacklevel=3)


def scan_split(folder: Path, root: Path | None = None,
               follow_links: bool = False) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names and (path, class index) pairs in ImageFolder order, by the rules of the module docstring.

    Args:
        folder: one split's folder, with one subfolder per class.
        root: the dataset root that links to files must stay inside; default: ``folder`` itself.
        follow_links: count links to regular files outside ``root`` too (``data.follow_links``).
    """
    scan = _Scan(folder, root, follow_links)
    names = scan.class_folders()
    found = [item for target in range(len(names)) for item in scan.class_files(target)]
    samples = scan.count_once(found)
    scan.warn()
    if not names:
        raise VitreduceError(f"{folder} is not a usable ImageFolder tree: no class folder in it")
    empty = sorted(set(names) - {names[target] for _, target in samples})
    if empty and scan.outside:
        shown = ", ".join(f"{link} -> {real}" for link, real in scan.outside[:3])
        raise VitreduceError(
            f"{folder}: the class folders {', '.join(empty[:5])} hold links to files outside the dataset root "
            f"{scan.real_root} ({len(scan.outside)} such links, e.g. {shown}), which are not followed unless asked: "
            "set data.follow_links: true (--follow-links for eval, sharpness and landscape) to read them, or copy "
            "the files in")
    if empty:
        raise VitreduceError(f"{folder} is not a usable ImageFolder tree: no image file in the class folders "
                             f"{', '.join(empty)} (image files end in {', '.join(IMG_EXTENSIONS)})")
    return names, samples


def _is_dir(entry: os.DirEntry, *, follow: bool) -> bool:
    try:
        return entry.is_dir(follow_symlinks=follow)
    except OSError:
        return False


def _inside(path: str, folder: str) -> bool:
    """Whether the real path ``path`` is ``folder`` or lies below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class ImageFolderSamples(Dataset):
    """ImageFolder samples, loaded by key ``(index, sample_seed)`` with every RNG seeded from the seed.

    An item is ``(image, target, index, path)``; ``image`` is None when the file cannot be used, and
    ``path`` then says what went wrong (``read_rgb``).

    Args:
        folder: one split's folder, with one subfolder per class.
        transform: applied to each decoded RGB image.
        root: the dataset root links to files must stay inside (``scan_split``); default: ``folder``.
        follow_links: count links to files outside ``root`` too (``data.follow_links``).
    """

    def __init__(self, folder: Path, transform, root: Path | None = None, follow_links: bool = False):
        self.classes, self.samples = scan_split(folder, root, follow_links)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]):
        index, sample_seed = key
        path, target = self.samples[index]
        with seeded_rngs(sample_seed):
            image, problem = read_rgb(path)
            if image is None:
                return None, target, index, problem
            return self.transform(image), target, index, path
