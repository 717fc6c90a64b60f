"""Training and evaluation batches: exactly reproducible, with unreadable images dropped and reported.

- Every random draw is seeded per sample and per batch (see ``vitreduce.data.sampling``): batches are
  a pure function of (seed, epoch, rank, world_size), whatever ``data.workers`` is, and
  ``set_epoch(e, start_batch=k)`` yields exactly the batches k.. of epoch e. Iterating a loader leaves
  the global RNGs of the calling process as they were.
- Augmentation is timm's (``vitreduce.data.transforms``), ``timm.data.Mixup`` with label smoothing.
- Repeated augmentation (``aug.repeated_aug > 1``) is honoured on one process too, where timm's
  train.py would ignore it: the recipe names it, and a 1-process run should train on the same kind of
  epoch as the 2-process one. The epoch keeps its usual length and draws about 1/repeats of the images,
  each repeats times with independent augmentations (timm's RepeatAugSampler semantics).
- Which files of a split are samples, and how their pixels become RGB, is ``vitreduce.data.images``; a
  split is an image folder or a tar shard set (``vitreduce.data.source``), read alike.
- Unreadable images (truncated, garbage, empty files, refused pixel modes) are never replaced:
  they are dropped from their batch and reported (``Batch.bad_paths``, ``EvalLoader.bad_paths``: the
  path, with the reason when PIL could decode the file). A loader raises VitreduceError once more than
  ``data.max_bad_fraction`` of its epoch's samples were unreadable.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from timm.data import Mixup
from torch.utils.data import DataLoader, Dataset

from vitreduce.config_tree import kwargs_from
from vitreduce.data.config import AugmentConfig, DataConfig
from vitreduce.data.images import BadImageTracker, ImageFolderSamples
from vitreduce.data.pixels import refuse_gray_fill
from vitreduce.data.sampling import EpochSampler, derive_seed, epoch_length, epoch_order, eval_shard, seeded_rngs
from vitreduce.data.shards import ShardSamples
from vitreduce.data.source import open_split
from vitreduce.data.transforms import eval_transform, train_transform
from vitreduce.errors import VitreduceError

_MIX_KEY, _LOADER_KEY = 0x4D4958, 0x4C4F4144  # separate the seed streams of mixup and DataLoader workers


class Batch(NamedTuple):
    """One training micro-batch."""

    images: torch.Tensor  # (B, C, H, W) float
    targets: torch.Tensor  # (B,) long, or (B, num_classes) float when mixup/cutmix is active
    bad_paths: list[str]  # unreadable files dropped from this batch (and from skipped empty ones before it)
    index: int  # position of this batch in the epoch; resume after it with set_epoch(epoch, index + 1)


class _Loaded(NamedTuple):
    """A collated batch as it leaves a worker: readable samples stacked, unreadable ones named."""

    images: torch.Tensor  # (B, C, H, W), or empty when every sample was unreadable
    targets: torch.Tensor  # (B,) long
    indices: torch.Tensor  # (B,) long, positions in the dataset
    bad_paths: list[str]


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
        refuse_gray_fill()
        if aug.mixup_active and data.batch_size % 2:
            raise VitreduceError(
                f"data.batch_size={data.batch_size} is odd, but timm's Mixup/CutMix mixes a batch with its "
                "reverse and needs an even batch: make data.batch_size even or set aug.mixup=aug.cutmix=0"
            )
        self.data, self.aug, self.num_classes = data, aug, num_classes
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.repeats = aug.repeated_aug if aug.enabled else 1
        self.dataset = open_split(data, data.train_split, train_transform(aug, img_size))
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
        return Mixup(
            num_classes=self.num_classes,
            **kwargs_from(self.aug, mixup_alpha="mixup", cutmix_alpha="cutmix", prob="mixup_prob",
                          switch_prob="mixup_switch_prob", mode="mixup_mode", label_smoothing="smoothing"),
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

    def __init__(self, data: DataConfig, dataset: ImageFolderSamples | ShardSamples, indices: list[int],
                 batch_size: int):
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
    refuse_gray_fill()
    if limit is not None and limit < 1:
        raise VitreduceError(f"limit={limit}: evaluate at least one sample, or pass None for the whole split")
    dataset = open_split(data, split or data.val_split, eval_transform(aug, img_size))
    total = len(dataset) if limit is None else min(limit, len(dataset))
    indices = eval_shard(total, rank=rank, world_size=world_size)
    return EvalLoader(data, dataset, indices, data.eval_batch_size or data.batch_size)
