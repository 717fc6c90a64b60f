"""Training and evaluation data: ImageFolder trees, timm's transforms and Mixup, exactly reproducible.

- Files are indexed in torchvision's ImageFolder order (sorted class folders, sorted files); an eval
  index is a position in that order (``predictions.csv`` uses it). timm's ImageDataset is not used: it
  sorts classes "naturally" (``class10`` after ``class2``) and silently retries another file when one
  cannot be read.
- Augmentation is timm's: ``create_transform`` with the AugmentConfig values, ``timm.data.Mixup`` with
  label smoothing. Every random draw is seeded per sample and per batch (see ``vitreduce.data.sampling``):
  batches are a pure function of (seed, epoch, rank, world_size), whatever ``data.workers`` is, and
  ``set_epoch(e, start_batch=k)`` yields exactly the batches k.. of epoch e. Iterating a loader leaves
  the global RNGs of the calling process as they were.
- Repeated augmentation (``aug.repeated_aug > 1``) is honoured on one process too, where timm's
  train.py would ignore it: the recipe names it, and a 1-process run should train on the same kind of
  epoch as the 2-process one. The epoch keeps its usual length and draws about 1/repeats of the images,
  each repeats times with independent augmentations (timm's RepeatAugSampler semantics).
- Unreadable images (truncated, garbage, empty files) are never replaced: they are dropped from their
  batch and their paths reported (``Batch.bad_paths``, ``EvalLoader.bad_paths``). A loader raises
  VitreduceError once more than ``data.max_bad_fraction`` of its epoch's samples were unreadable.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image, ImageFile
from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from timm.data import Mixup, auto_augment, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from vitreduce.data.sampling import EpochSampler, derive_seed, epoch_length, epoch_order, eval_shard, seeded_rngs
from vitreduce.errors import VitreduceError

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
_MIX_KEY, _LOADER_KEY = 0x4D4958, 0x4C4F4144  # separate the seed streams of mixup and DataLoader workers
# What PIL raises for a file it cannot decode: OSError (unidentified, truncated, missing), SyntaxError
# (broken PNG chunks), ValueError (bad header fields), DecompressionBombError (absurd dimensions).
_UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class DataConfig(BaseModel):
    """Where the images are and how they are batched."""

    model_config = ConfigDict(extra="forbid")

    root: str  # ImageFolder root holding <train_split>/ and <val_split>/, each with one folder per class
    train_split: str = "train"
    val_split: str = "val"
    batch_size: int = 256  # per rank, per micro-batch
    eval_batch_size: int | None = None  # None: batch_size
    workers: int = 4
    pin_memory: bool = True  # only takes effect when CUDA is available
    max_bad_fraction: float = 0.01  # fail once more than this fraction of an epoch's samples are unreadable

    @field_validator("batch_size", "eval_batch_size")
    @classmethod
    def _positive(cls, value, info):
        if value is not None and value < 1:
            raise ValueError(f"data.{info.field_name} must be >= 1, got {value}")
        return value

    @field_validator("workers")
    @classmethod
    def _workers(cls, value):
        if value < 0:
            raise ValueError(f"data.workers must be >= 0 (0 loads in the main process), got {value}")
        return value

    @field_validator("max_bad_fraction")
    @classmethod
    def _fraction(cls, value):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"data.max_bad_fraction must be in [0, 1), got {value}")
        return value

    @field_validator("root", "train_split", "val_split")
    @classmethod
    def _non_empty(cls, value, info):
        if not value.strip():
            raise ValueError(f"data.{info.field_name} must not be empty")
        return value


class AugmentConfig(BaseModel):
    """Training augmentation and eval preprocessing; the defaults are the paper's recipe (timm's DeiT-style)."""

    model_config = ConfigDict(extra="forbid")

    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect range
    hflip: float = 0.5
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4  # timm's default; timm applies it only when auto_augment is None
    interpolation: str = "bicubic"  # eval resize, and training unless train_interpolation is set
    train_interpolation: str | None = None  # None: `interpolation`; timm's train.py default is "random"
    reprob: float = 0.25
    remode: str = "pixel"
    recount: int = 1
    mixup: float = 0.8  # mixup alpha; 0 = off
    cutmix: float = 1.0  # cutmix alpha; 0 = off
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    smoothing: float = 0.1  # label smoothing (a loss setting: kept even when enabled=False)
    repeated_aug: int = 3  # repeated augmentation count; 1 = off
    crop_pct: float = 0.9  # eval centre crop
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    enabled: bool = True  # False: eval transform for training too; no mixup/cutmix/erasing/repeats

    @field_validator("hflip", "reprob", "mixup_prob", "mixup_switch_prob")
    @classmethod
    def _probability(cls, value, info):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"augment.{info.field_name} is a probability, must be in [0, 1], got {value}")
        return value

    @field_validator("mixup", "cutmix", "color_jitter")
    @classmethod
    def _non_negative(cls, value, info):
        if value < 0:
            raise ValueError(f"augment.{info.field_name} must be >= 0 (0 turns it off), got {value}")
        return value

    @field_validator("smoothing")
    @classmethod
    def _smoothing(cls, value):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"augment.smoothing must be in [0, 1), got {value}")
        return value

    @field_validator("recount", "repeated_aug")
    @classmethod
    def _count(cls, value, info):
        if value < 1:
            raise ValueError(f"augment.{info.field_name} must be >= 1 (1 = no repeats), got {value}")
        return value

    @field_validator("crop_pct")
    @classmethod
    def _crop_pct(cls, value):
        if not 0.0 < value <= 1.0:
            raise ValueError(f"augment.crop_pct must be in (0, 1], got {value}")
        return value

    @field_validator("remode", "mixup_mode", "interpolation", "train_interpolation")
    @classmethod
    def _choice(cls, value, info):
        choices = {
            "remode": ("pixel", "rand", "const"),
            "mixup_mode": ("batch", "pair", "elem"),
            "interpolation": _INTERPOLATIONS,
            "train_interpolation": (*_INTERPOLATIONS, "random"),
        }[info.field_name]
        if value is not None and value not in choices:
            raise ValueError(f"augment.{info.field_name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    @field_validator("auto_augment")
    @classmethod
    def _auto_augment(cls, value):
        if value:  # build it once so a typo fails here, not in a worker process mid-epoch
            try:
                create_transform(32, is_training=True, auto_augment=value)
            except (AssertionError, ValueError, KeyError, IndexError) as err:
                raise ValueError(f"augment.auto_augment={value!r} is not a timm policy string ({err})") from None
        return value

    @model_validator(mode="after")
    def _ranges(self):
        for name in ("scale", "ratio"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"augment.{name} must be (low, high) with 0 < low <= high, got {(low, high)}")
        if self.scale[1] > 1:
            raise ValueError(f"augment.scale is a fraction of the image area, must be <= 1, got {self.scale}")
        if min(self.std) <= 0:
            raise ValueError(f"augment.std must be positive, got {self.std}")
        return self

    @property
    def mixup_active(self) -> bool:
        """Whether training targets are mixed (soft, (B, num_classes)); timm's definition."""
        return self.enabled and (self.mixup > 0 or self.cutmix > 0)


class Batch(NamedTuple):
    """One training micro-batch."""

    images: torch.Tensor  # (B, C, H, W) float
    targets: torch.Tensor  # (B,) long, or (B, num_classes) float when mixup/cutmix is active
    bad_paths: list[str]  # unreadable files dropped from this batch (and from skipped empty ones before it)
    index: int  # position of this batch in the epoch; resume after it with set_epoch(epoch, index + 1)


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
    classes = {split: _scan(_split_dir(data, split))[0] for split in (data.train_split, data.val_split)}
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


def _split_dir(data: DataConfig, split: str) -> Path:
    path = Path(data.root).expanduser() / split
    if not path.is_dir():
        raise VitreduceError(f"{path} is not a folder: check data.root and the split names (data.*_split)")
    return path


def _scan(split_dir: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names and (path, class index) pairs in ImageFolder order."""
    try:
        classes, class_to_idx = find_classes(str(split_dir))
        samples = make_dataset(str(split_dir), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as err:  # torchvision's message names the empty class folders
        raise VitreduceError(f"{split_dir} is not a usable ImageFolder tree: {err}") from None
    return classes, samples


def _refuse_gray_fill() -> None:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise VitreduceError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by some imported code): truncated images "
            "would be gray-filled instead of reported. Set it back to False"
        )


def _load_rgb(path: str) -> Image.Image | None:
    """The decoded RGB image, or None when the file cannot be read or fully decoded."""
    try:
        with open(path, "rb") as handle, Image.open(handle) as image:
            return image.convert("RGB")  # decodes every pixel, so truncation is detected here
    except _UNREADABLE:
        return None  # the caller reports the path


class _Loaded(NamedTuple):
    """A collated batch as it leaves a worker: readable samples stacked, unreadable ones named."""

    images: torch.Tensor  # (B, C, H, W), or empty when every sample was unreadable
    targets: torch.Tensor  # (B,) long
    indices: torch.Tensor  # (B,) long, positions in the dataset
    bad_paths: list[str]


class _Images(Dataset):
    """ImageFolder samples, loaded by key ``(index, sample_seed)`` with every RNG seeded from the seed."""

    def __init__(self, split_dir: Path, transform):
        self.classes, self.samples = _scan(split_dir)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]):
        index, sample_seed = key
        path, target = self.samples[index]
        with seeded_rngs(sample_seed):
            image = _load_rgb(path)
            if image is None:
                return None, target, index, path
            return self.transform(image), target, index, path


def _collate(items) -> _Loaded:
    good = [item for item in items if item[0] is not None]
    return _Loaded(
        images=torch.stack([item[0] for item in good]) if good else torch.empty(0),
        targets=torch.tensor([item[1] for item in good], dtype=torch.long),
        indices=torch.tensor([item[2] for item in good], dtype=torch.long),
        bad_paths=[item[3] for item in items if item[0] is None],
    )


def _data_loader(data: DataConfig, dataset: Dataset, sampler, batch_size: int, *, drop_last: bool, seed: int):
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=data.workers,
        collate_fn=_collate,
        pin_memory=data.pin_memory and torch.cuda.is_available(),
        persistent_workers=False,
        # Workers seed themselves from this generator; fixing it keeps the DataLoader from drawing
        # from the caller's global torch RNG (which the training step's drop-path uses).
        generator=torch.Generator().manual_seed(seed),
    )


def eval_transform(aug: AugmentConfig, img_size: int | tuple[int, int]):
    """timm's eval preprocessing: resize, centre crop of ``aug.crop_pct``, normalise."""
    return create_transform(
        img_size, is_training=False, interpolation=aug.interpolation, mean=aug.mean, std=aug.std, crop_pct=aug.crop_pct
    )


def train_transform(aug: AugmentConfig, img_size: int | tuple[int, int]):
    """timm's training transform for ``aug`` (the eval transform when ``aug.enabled`` is False)."""
    if not aug.enabled:
        return eval_transform(aug, img_size)
    transform = create_transform(
        img_size,
        is_training=True,
        scale=aug.scale,
        ratio=aug.ratio,
        hflip=aug.hflip,
        color_jitter=aug.color_jitter,
        auto_augment=aug.auto_augment,
        interpolation=aug.train_interpolation or aug.interpolation,
        mean=aug.mean,
        std=aug.std,
        re_prob=aug.reprob,
        re_mode=aug.remode,
        re_count=aug.recount,
    )
    _patch_posterize(transform)
    return transform


def _posterize(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's posterize, keeping 0 bits as Pillow < 13 did (a black image); Pillow 13 raises instead."""
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return auto_augment.posterize(img, bits_to_keep, **kwargs)


def _patch_posterize(transform) -> None:
    """Point the posterize ops of timm's RandAugment/AutoAugment/AugMix at `_posterize`.

    timm asks for 0 bits whenever the sampled magnitude reaches 10 (``rand-m9-mstd0.5-inc1`` draws
    N(9, 0.5), so about 2% of its PosterizeIncreasing calls), and Pillow 13 refuses that: unpatched,
    the recipe crashes within the first epoch.
    """
    for step in getattr(transform, "transforms", []):
        ops = list(getattr(step, "ops", [])) + [op for sub in getattr(step, "policy", []) for op in sub]
        for op in ops:
            if getattr(op, "aug_fn", None) is auto_augment.posterize:
                op.aug_fn = _posterize


def train_loss_fn(aug: AugmentConfig) -> nn.Module:
    """The training loss timm's train.py pairs with these targets.

    SoftTargetCrossEntropy when mixup/cutmix is active (Mixup already smoothed the targets),
    LabelSmoothingCrossEntropy when only label smoothing is set, CrossEntropyLoss otherwise.
    """
    if aug.mixup_active:
        return SoftTargetCrossEntropy()
    if aug.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=aug.smoothing)
    return nn.CrossEntropyLoss()


def build_train_loader(
    data: DataConfig,
    aug: AugmentConfig,
    img_size: int | tuple[int, int],
    num_classes: int,
    *,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> TrainLoader:
    """The training loader of one rank; call ``set_epoch`` before iterating each epoch.

    Args:
        data: where the images are and how they are batched (``data.batch_size`` per rank).
        aug: augmentation; ``aug.repeated_aug`` is honoured for any world_size (see the module docstring).
        img_size: model input size, ``S`` or ``(H, W)``.
        num_classes: number of classes (for the soft targets of mixup/cutmix).
        seed: the run's seed; with (epoch, rank, world_size) it fixes every batch.
        rank: this process's rank.
        world_size: number of processes.
    """
    return TrainLoader(data, aug, img_size, num_classes, seed=seed, rank=rank, world_size=world_size)


class TrainLoader:
    """Iterates one rank's training batches of the epoch set by ``set_epoch`` (see ``build_train_loader``)."""

    def __init__(
        self, data: DataConfig, aug: AugmentConfig, img_size, num_classes: int, *, seed: int, rank: int, world_size: int
    ):
        _refuse_gray_fill()
        if aug.mixup_active and data.batch_size % 2:
            raise VitreduceError(
                f"data.batch_size={data.batch_size} is odd, but timm's Mixup/CutMix mixes a batch with its "
                "reverse and needs an even batch: make data.batch_size even or set aug.mixup=aug.cutmix=0"
            )
        self.data, self.aug, self.num_classes = data, aug, num_classes
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.repeats = aug.repeated_aug if aug.enabled else 1
        self.dataset = _Images(_split_dir(data, data.train_split), train_transform(aug, img_size))
        self.samples_per_epoch = epoch_length(len(self.dataset), rank=rank, world_size=world_size, repeats=self.repeats)
        if self.samples_per_epoch < data.batch_size:
            raise VitreduceError(
                f"{data.train_split}/ gives {self.samples_per_epoch} samples per epoch to each of {world_size} "
                f"rank(s), fewer than data.batch_size={data.batch_size}: lower data.batch_size"
            )
        self.mixup = self._mixup() if aug.mixup_active else None
        self.bad_paths: list[str] = []  # every unreadable file met so far in the current epoch
        self.set_epoch(0)

    def _mixup(self) -> Mixup:
        aug = self.aug
        return Mixup(
            mixup_alpha=aug.mixup,
            cutmix_alpha=aug.cutmix,
            prob=aug.mixup_prob,
            switch_prob=aug.mixup_switch_prob,
            mode=aug.mixup_mode,
            label_smoothing=aug.smoothing,
            num_classes=self.num_classes,
        )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (from 0) and the batch to start at; the order is fixed here.

        Args:
            epoch: epoch number, counted from 0.
            start_batch: batches of this epoch already done (a resumed run passes the next batch's index).
        """
        if not 0 <= start_batch <= len(self):
            raise VitreduceError(f"start_batch={start_batch} is outside this epoch's {len(self)} batches")
        key = dict(seed=self.seed, epoch=epoch, rank=self.rank, world_size=self.world_size)
        order = epoch_order(len(self.dataset), repeats=self.repeats, **key)
        self._sampler = EpochSampler(order, start=start_batch * self.data.batch_size, **key)
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        """Batches per epoch for this rank (incomplete last batch dropped), counting from batch 0."""
        return self.samples_per_epoch // self.data.batch_size

    def train_loss_fn(self) -> nn.Module:
        """The loss for this loader's targets (see the module-level ``train_loss_fn``)."""
        return train_loss_fn(self.aug)

    def __iter__(self):
        self.bad_paths = []
        tracker = BadImageTracker(self.data.max_bad_fraction, self.samples_per_epoch)
        loader_seed = derive_seed(self.seed, self.epoch, self.rank, _LOADER_KEY)
        batch_size = self.data.batch_size
        loader = _data_loader(self.data, self.dataset, self._sampler, batch_size, drop_last=True, seed=loader_seed)
        pending: list[str] = []  # bad paths of skipped empty batches, reported with the next batch
        for index, loaded in enumerate(loader, start=self.start_batch):
            self.bad_paths.extend(loaded.bad_paths)
            tracker.add(loaded.bad_paths)
            pending.extend(loaded.bad_paths)
            images, targets = loaded.images, loaded.targets
            if self.mixup is not None and len(targets) % 2:
                # Mixup pairs each sample with its mirror in the batch and needs an even count: after a
                # drop, the last readable sample is left out too (it is fine, so it is not reported).
                images, targets = images[:-1], targets[:-1]
            if len(targets) == 0:
                continue  # nothing left to train on; the batch index still advances
            if self.mixup is not None:
                with seeded_rngs(derive_seed(self.seed, self.epoch, self.rank, index, _MIX_KEY)):
                    images, targets = self.mixup(images, targets)
            yield Batch(images, targets, pending, index)
            pending = []


class EvalLoader:
    """Deterministic eval batches ``(images, targets, indices)``; unreadable files go to ``bad_paths``."""

    def __init__(self, data: DataConfig, dataset: _Images, indices: list[int], batch_size: int):
        self.data, self.dataset, self.indices, self.batch_size = data, dataset, indices, batch_size
        self.num_samples = len(indices)
        self.bad_paths: list[str] = []  # unreadable files of the current (or last) pass

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def __iter__(self):
        """Yield ``(images (B,C,H,W), targets (B,), indices (B,))``; indices are positions in the split."""
        self.bad_paths = []
        tracker = BadImageTracker(self.data.max_bad_fraction, self.num_samples)
        keys = [(index, 0) for index in self.indices]  # the eval transform draws nothing random
        for loaded in _data_loader(self.data, self.dataset, keys, self.batch_size, drop_last=False, seed=0):
            self.bad_paths.extend(loaded.bad_paths)
            tracker.add(loaded.bad_paths)
            if len(loaded.targets):
                yield loaded.images, loaded.targets, loaded.indices


def build_eval_loader(
    data: DataConfig,
    aug: AugmentConfig,
    img_size: int | tuple[int, int],
    *,
    split: str | None = None,
    rank: int = 0,
    world_size: int = 1,
    limit: int | None = None,
) -> EvalLoader:
    """An eval loader over one split, in ImageFolder order, sharded over ranks without padding.

    Args:
        data: where the images are (``data.eval_batch_size`` or ``data.batch_size`` per batch).
        aug: gives the eval preprocessing (``crop_pct``, ``interpolation``, ``mean``, ``std``).
        img_size: model input size, ``S`` or ``(H, W)``.
        split: split folder; default ``data.val_split``.
        rank: this process's rank; it gets positions ``rank, rank + world_size, ...``.
        world_size: number of processes; the shards' union is every sample exactly once.
        limit: keep only the first ``limit`` samples of the split (before sharding).
    """
    _refuse_gray_fill()
    if limit is not None and limit < 1:
        raise VitreduceError(f"limit={limit}: evaluate at least one sample, or pass None for the whole split")
    dataset = _Images(_split_dir(data, split or data.val_split), eval_transform(aug, img_size))
    total = len(dataset) if limit is None else min(limit, len(dataset))
    indices = eval_shard(total, rank=rank, world_size=world_size)
    return EvalLoader(data, dataset, indices, data.eval_batch_size or data.batch_size)
