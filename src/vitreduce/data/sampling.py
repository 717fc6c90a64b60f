"""Epoch orders and per-sample seeds: what makes training data exactly reproducible and resumable.

An epoch's sample order is a pure function of (seed, epoch, rank, world_size), built with the samplers
timm's train.py uses (timm's RepeatAugSampler when repeats > 1, torch's DistributedSampler otherwise).
Each position in the order carries its own seed, a pure function of (seed, epoch, global position), and
every random draw made while loading that sample is made from RNGs seeded with it (`seeded_rngs`). So
the batches do not depend on how many worker processes load them, and an epoch resumed at batch k
yields exactly the batches k.. of the uninterrupted epoch.
"""
from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from timm.data.distributed_sampler import RepeatAugSampler
from torch.utils.data import DistributedSampler, Sampler

from vitreduce.errors import VitreduceError

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One step of the splitmix64 mixer: nearby inputs give unrelated 64-bit outputs."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (stable across processes and platforms).

    Python's ``hash`` is salted per process for strings and numpy's SeedSequence is slower per call;
    a fixed integer mixer keeps workers, ranks and resumed runs in agreement.
    """
    state = 0
    for part in parts:
        state = _splitmix64(state ^ (int(part) & _MASK64))
    return state >> 1


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed python ``random``, numpy's global RNG and torch's CPU generator; restore all three after.

    timm's and torchvision's transforms draw from all three (RandomResizedCrop and RandomErasing's boxes
    from ``random``, RandAugment's op choice from numpy, flips and erasing noise from torch) and timm's
    Mixup from numpy. Only the CPU generator is touched: ``torch.manual_seed`` would also reseed CUDA and
    disturb the training step's own randomness (drop-path) in the main process.
    """
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF])  # numpy seeds are 32-bit words
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise VitreduceError(f"rank={rank}, world_size={world_size}: need world_size >= 1 and 0 <= rank < world_size")


def _base_sampler(num_samples: int, *, rank: int, world_size: int, repeats: int) -> Sampler:
    if repeats > 1:
        return RepeatAugSampler(range(num_samples), num_replicas=world_size, rank=rank, num_repeats=repeats)
    # seed=0: the epoch key passed to set_epoch already mixes in the run's seed.
    return DistributedSampler(range(num_samples), num_replicas=world_size, rank=rank, shuffle=True, seed=0)


def epoch_length(num_samples: int, *, rank: int, world_size: int, repeats: int) -> int:
    """Samples one rank draws per epoch (the same for every epoch)."""
    _check_rank(rank, world_size)
    return len(_base_sampler(num_samples, rank=rank, world_size=world_size, repeats=repeats))


def epoch_order(num_samples: int, *, seed: int, epoch: int, rank: int, world_size: int, repeats: int) -> list[int]:
    """Dataset indices one rank visits in one epoch, in order.

    Args:
        num_samples: size of the dataset.
        seed: the run's seed.
        epoch: epoch number (from 0).
        rank: this process's rank.
        world_size: number of processes.
        repeats: repeated-augmentation count; > 1 uses timm's RepeatAugSampler (each image appears
            ``repeats`` times in the global order, the copies strided over ranks, and each rank draws
            about ``num_samples / world_size`` samples, rounded down to a multiple of 256 as timm does),
            1 uses torch's DistributedSampler (a permutation padded so ranks are even).
    """
    _check_rank(rank, world_size)
    sampler = _base_sampler(num_samples, rank=rank, world_size=world_size, repeats=repeats)
    # Both samplers seed their permutation from the value given to set_epoch alone (timm's ignores any
    # seed), so the run's seed enters through that value.
    sampler.set_epoch(derive_seed(seed, epoch))
    return list(sampler)


class EpochSampler(Sampler):
    """Yields ``(dataset_index, sample_seed)`` for one rank's epoch, starting at a given position.

    Both base samplers stride the global order over ranks, so local position ``p`` on ``rank`` is global
    position ``p * world_size + rank``; the sample seed is keyed by that global position, which keeps the
    copies of a repeated image (adjacent global positions) differently augmented on every rank.
    """

    def __init__(self, order: list[int], *, seed: int, epoch: int, rank: int, world_size: int, start: int = 0):
        self.order, self.start = order, start
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for position in range(self.start, len(self.order)):
            global_position = position * self.world_size + self.rank
            yield self.order[position], derive_seed(self.seed, self.epoch, global_position)

    def __len__(self) -> int:
        return max(0, len(self.order) - self.start)


def eval_shard(num_samples: int, *, rank: int, world_size: int) -> list[int]:
    """A rank's strided share of ``range(num_samples)``: disjoint, unpadded, the union is every index once."""
    _check_rank(rank, world_size)
    return list(range(rank, num_samples, world_size))
