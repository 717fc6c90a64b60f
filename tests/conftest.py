"""Shared fixtures: one tiny model, one tiny dataset and one tiny train config, all built in milliseconds on CPU.

The slow end-to-end, resume and DDP tests are in tests/integration/; they take what they share from
the fixtures here, not by importing this module.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from killer import KILLER

import vitreduce
from vitreduce.config_tree import merge
from vitreduce.data.synth import write_synth_dataset

# Tiny models gain nothing from threads, and pytest-xdist already runs one worker per core:
# more threads only oversubscribe the cores (a tiny forward took 0.27 s with 2 threads, 1 ms with 1).
# Tests that compare a run trained here with one trained in a subprocess rely on this too: the
# subprocess gets one thread from `python_one_thread`. The CLI sets torch's threads from --threads or
# OMP_NUM_THREADS (else from the machine's load), so in-process `main([...])` calls get one thread too.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

TINY_VIT = dict(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2, num_classes=5)


def tiny_model(reduction: str = "none", seed: int = 0, **overrides) -> torch.nn.Module:
    """A 4-block ViT on 16x16 images, deterministic for a seed."""
    torch.manual_seed(seed)
    return vitreduce.create_model("vit_tiny_patch16_224", reduction=reduction, **{**TINY_VIT, **overrides}).eval()


@pytest.fixture
def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(123)
    return torch.randn(3, 3, 16, 16, generator=generator)  # (B, C, H, W)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """The built-in synthetic dataset, 4 classes of 16x16 images: 32 to train on (4 batches of 8), 16 to evaluate.

    Shared by every test in a worker: read it, never write into it (copy it to change it).
    """
    return write_synth_dataset(tmp_path_factory.mktemp("data") / "synth", classes=4, train_per_class=8,
                               val_per_class=4, size=16)


@pytest.fixture(scope="session")
def tiny_train_config(tiny_dataset) -> Callable[..., dict]:
    """``tiny_train_config(**overrides)``: a train-config tree on ``tiny_dataset``, ``overrides`` merged in
    section by section (``data={"workers": 2}`` changes that key only).

    3 epochs x 4 steps of a 2-block grouped ViT; drop-path, RandAugment, erasing, mixup/cutmix and EMA
    on, so RNG state matters.
    """

    def build(**overrides) -> dict:
        tree = {
            "seed": 3, "epochs": 3, "device": "cpu", "precision": "fp32",
            "model": {"name": "vit_tiny_patch16_224", "reduction": "grouped", "num_classes": 4, "img_size": 16,
                      "patch_size": 4, "embed_dim": 16, "depth": 2, "num_heads": 2, "drop_path_rate": 0.1},
            "data": {"root": str(tiny_dataset), "batch_size": 8, "workers": 0},
            "augment": {"repeated_aug": 1, "mixup": 0.8, "cutmix": 1.0, "reprob": 0.25},
            "optimizer": {"lr": 1e-3},
            "schedule": {"warmup_epochs": 1},
            "ema": {"decay": 0.9},
            "checkpoint": {"recovery_every_steps": 2},
            "logging": {"progress": "lines", "every_steps": 1, "step_every": 1},  # steps.jsonl: every step
        }
        return merge(tree, overrides)

    return build


@pytest.fixture(scope="session")
def killer() -> Path:
    """tests/killer.py, a script that trains a run and SIGKILLs itself at a chosen event:
    ``python_one_thread(killer, "step:7", config, out)``."""
    return KILLER


@pytest.fixture(scope="session")
def python_one_thread() -> Callable[..., subprocess.CompletedProcess]:
    """``python_one_thread(*args, **run_kwargs)``: ``python ARGS`` in a subprocess (``subprocess.run``) with
    one OpenMP thread, as in this process: runs compared bit for bit must use the same thread count."""

    def run(*args, **run_kwargs) -> subprocess.CompletedProcess:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.run([sys.executable, *map(str, args)], env=env, **run_kwargs)

    return run
