"""The data pipeline: exact, worker-independent, resumable batches; honest handling of unreadable images."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from pydantic import ValidationError
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from vitreduce.data import (
    AugmentConfig,
    BadImageTracker,
    DataConfig,
    build_eval_loader,
    build_train_loader,
    check_dataset,
    eval_transform,
    train_loss_fn,
    train_transform,
)
from vitreduce.data.sampling import epoch_order
from vitreduce.errors import VitreduceError

CLASSES = ("ant", "bee", "cow")
SIZE = 16  # model input size: small enough that an epoch of RandAugment takes milliseconds


def _write_images(folder: Path, count: int, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 256, (18 + i % 5, 20 + i % 3, 3), dtype=np.uint8)  # varied sizes, like real data
        suffix = ".jpg" if i % 2 else ".png"
        Image.fromarray(pixels).save(folder / f"img{i:02d}{suffix}")


def _make_tree(root: Path, train_per_class: int = 8, val_per_class: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for name in CLASSES:
        _write_images(root / "train" / name, train_per_class, rng)
        _write_images(root / "val" / name, val_per_class, rng)
    return root


def _add_bad_files(folder: Path) -> list[str]:
    """A truncated JPEG, garbage bytes named .jpg and an empty file; returns their paths."""
    truncated = folder / "truncated.jpg"
    pixels = np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[:4000])  # headers intact: PIL opens it, decoding fails
    (folder / "garbage.jpg").write_bytes(b"this is not a JPEG" * 10)
    (folder / "zero.jpg").write_bytes(b"")
    return sorted(str(folder / name) for name in ("truncated.jpg", "garbage.jpg", "zero.jpg"))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return _make_tree(tmp_path_factory.mktemp("data"))


def _data(root: Path, **kwargs) -> DataConfig:
    return DataConfig(**{"root": str(root), "batch_size": 4, "workers": 0, **kwargs})


def _epoch(loader, epoch: int, start_batch: int = 0) -> list:
    loader.set_epoch(epoch, start_batch)
    return list(loader)


def _same_batches(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        x.index == y.index and torch.equal(x.images, y.images) and torch.equal(x.targets, y.targets)
        for x, y in zip(a, b, strict=True)
    )


# --- configs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"batch_size": 0}, "data.batch_size"), ({"workers": -1}, "data.workers"),
     ({"max_bad_fraction": 1.0}, "data.max_bad_fraction"), ({"eval_batch_size": 0}, "data.eval_batch_size")],
)  # fmt: skip
def test_data_config_refuses_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValidationError, match=field):
        DataConfig(root="x", **kwargs)
    with pytest.raises(ValidationError, match="extra"):
        DataConfig(root="x", batchsize=3)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"auto_augment": "rand-q9"}, "augment.auto_augment"), ({"remode": "noise"}, "augment.remode"),
     ({"hflip": 1.5}, "augment.hflip"), ({"scale": (0.5, 0.1)}, "augment.scale"),
     ({"repeated_aug": 0}, "augment.repeated_aug"), ({"interpolation": "random"}, "augment.interpolation"),
     ({"mixup_mode": "all"}, "augment.mixup_mode")],
)  # fmt: skip
def test_augment_config_refuses_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValidationError, match=field):
        AugmentConfig(**kwargs)


def test_augment_defaults_are_the_papers_recipe():
    aug = AugmentConfig()
    assert (aug.mixup, aug.cutmix, aug.smoothing, aug.reprob, aug.repeated_aug) == (0.8, 1.0, 0.1, 0.25, 3)
    assert aug.auto_augment == "rand-m9-mstd0.5-inc1" and aug.crop_pct == 0.9 and aug.mean == (0.5, 0.5, 0.5)
    assert AugmentConfig(scale=[0.2, 1.0]).scale == (0.2, 1.0)  # YAML lists become tuples


# --- check_dataset ----------------------------------------------------------------------------------


def test_check_dataset_counts_classes_and_names_the_fix(tree):
    assert check_dataset(_data(tree), None) == 3
    assert check_dataset(_data(tree), 3) == 3
    with pytest.raises(VitreduceError, match=r"has 3 classes.*model\.num_classes=3"):
        check_dataset(_data(tree), 1000)


def test_check_dataset_refuses_missing_empty_and_mismatched_trees(tmp_path):
    with pytest.raises(VitreduceError, match="nowhere"):
        check_dataset(_data(tmp_path / "nowhere"), None)
    root = _make_tree(tmp_path / "d", 2, 2)
    with pytest.raises(VitreduceError, match=r"d/test is not a folder"):
        check_dataset(_data(root, val_split="test"), None)
    (root / "val" / "dog").mkdir()
    with pytest.raises(VitreduceError, match=r"d/val is not a usable ImageFolder.*dog"):
        check_dataset(_data(root), None)
    _write_images(root / "val" / "dog", 1, np.random.default_rng(0))
    with pytest.raises(VitreduceError, match=r"only in val: \['dog'\]"):
        check_dataset(_data(root), None)


# --- exactness of training batches ------------------------------------------------------------------

FULL_AUG = AugmentConfig(reprob=1.0)  # the recipe, with random erasing on every sample so it is exercised


def test_workers_do_not_change_batches_with_full_augmentation(tree):
    in_process = _epoch(build_train_loader(_data(tree), FULL_AUG, SIZE, 3, seed=7), epoch=2)
    in_workers = _epoch(build_train_loader(_data(tree, workers=2), FULL_AUG, SIZE, 3, seed=7), epoch=2)
    assert len(in_process) == 6 and in_process[0].targets.shape == (4, 3)  # soft targets from mixup/cutmix
    assert _same_batches(in_process, in_workers)


def test_iterating_leaves_the_callers_rngs_untouched(tree):
    loader = build_train_loader(_data(tree), FULL_AUG, SIZE, 3, seed=7)
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    before = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    _epoch(loader, 0)
    list(build_eval_loader(_data(tree), FULL_AUG, SIZE))
    assert random.getstate() == before[0]
    assert np.array_equal(np.random.get_state()[1], before[1]) and torch.equal(torch.get_rng_state(), before[2])


def test_resumed_epoch_yields_exactly_the_remaining_batches(tree):
    loader = build_train_loader(_data(tree, workers=2), FULL_AUG, SIZE, 3, seed=7)
    full = _epoch(loader, 1)
    resumed = _epoch(loader, 1, start_batch=4)
    assert [b.index for b in resumed] == [4, 5]
    assert _same_batches(full[4:], resumed)
    assert _epoch(loader, 1, start_batch=len(loader)) == []
    with pytest.raises(VitreduceError, match="start_batch=7"):
        loader.set_epoch(1, 7)


def test_epochs_and_seeds_give_different_batches(tree):
    loader = build_train_loader(_data(tree), FULL_AUG, SIZE, 3, seed=7)
    other_seed = build_train_loader(_data(tree), FULL_AUG, SIZE, 3, seed=8)
    epoch0 = _epoch(loader, 0)
    assert not torch.equal(epoch0[0].images, _epoch(loader, 1)[0].images)
    assert not torch.equal(epoch0[0].images, _epoch(other_seed, 0)[0].images)
    assert _same_batches(epoch0, _epoch(loader, 0))  # and the same epoch again is the same


def test_loader_follows_the_epoch_order(tree):
    """With augmentation off, batch i holds the eval-transformed images at positions 4i..4i+3 of the order."""
    aug = AugmentConfig(enabled=False, smoothing=0.0)
    loader = build_train_loader(_data(tree), aug, SIZE, 3, seed=3, rank=1, world_size=2)
    order = epoch_order(24, seed=3, epoch=5, rank=1, world_size=2, repeats=1)
    assert loader.samples_per_epoch == len(order) == 12 and len(loader) == 3
    samples, transform = loader.dataset.samples, eval_transform(aug, SIZE)
    for batch in _epoch(loader, 5):
        expected = [samples[i] for i in order[4 * batch.index : 4 * batch.index + 4]]
        images = torch.stack([transform(Image.open(path).convert("RGB")) for path, _ in expected])
        assert torch.equal(batch.images, images)
        assert batch.targets.tolist() == [target for _, target in expected]


def test_two_ranks_cover_the_epoch():
    orders = [epoch_order(25, seed=1, epoch=0, rank=r, world_size=2, repeats=1) for r in (0, 1)]
    assert len(orders[0]) == len(orders[1]) == 13  # DistributedSampler pads 25 to 26
    assert set(orders[0]) | set(orders[1]) == set(range(25))
    assert len(set(orders[0]) & set(orders[1])) == 1  # only the padding sample is shared
    assert epoch_order(25, seed=1, epoch=1, rank=0, world_size=2, repeats=1) != orders[0]


def test_repeated_augmentation_on_one_process(tree):
    order = epoch_order(24, seed=1, epoch=0, rank=0, world_size=1, repeats=3)
    assert len(order) == 24 and all(order[i] == order[i + 1] == order[i + 2] for i in range(0, 24, 3))
    aug = AugmentConfig(mixup=0.0, cutmix=0.0)  # repeats on, no mixing: the copies can be compared
    batch = _epoch(build_train_loader(_data(tree, batch_size=6), aug, SIZE, 3, seed=1), 0)[0]
    assert batch.targets[0] == batch.targets[1] == batch.targets[2]
    assert not torch.equal(batch.images[0], batch.images[1])  # the copies are augmented independently
    assert not torch.equal(batch.images[1], batch.images[2])


# --- targets, losses, refusals ---------------------------------------------------------------------


def test_targets_and_loss_follow_the_mixing_settings(tree):
    mixed = _epoch(build_train_loader(_data(tree), AugmentConfig(), SIZE, 3, seed=0), 0)[0]
    assert mixed.targets.dtype == torch.float32 and torch.allclose(mixed.targets.sum(1), torch.ones(4))
    assert mixed.targets.min() >= 0.1 / 3 - 1e-6  # label smoothing's floor
    only_smoothing = AugmentConfig(mixup=0.0, cutmix=0.0)
    hard = _epoch(build_train_loader(_data(tree), only_smoothing, SIZE, 3, seed=0), 0)[0]
    assert hard.targets.dtype == torch.long and hard.targets.shape == (4,)
    assert isinstance(train_loss_fn(AugmentConfig()), SoftTargetCrossEntropy)
    assert isinstance(train_loss_fn(only_smoothing), LabelSmoothingCrossEntropy)
    assert type(train_loss_fn(AugmentConfig(mixup=0.0, cutmix=0.0, smoothing=0.0))) is torch.nn.CrossEntropyLoss


def test_refuses_odd_batches_with_mixup_and_gray_filled_truncation(tree, monkeypatch):
    with pytest.raises(VitreduceError, match="data.batch_size=5 is odd"):
        build_train_loader(_data(tree, batch_size=5), AugmentConfig(), SIZE, 3, seed=0)
    with pytest.raises(VitreduceError, match="fewer than data.batch_size=64"):
        build_train_loader(_data(tree, batch_size=64), AugmentConfig(), SIZE, 3, seed=0)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(VitreduceError, match="LOAD_TRUNCATED_IMAGES"):
        build_eval_loader(_data(tree), AugmentConfig(), SIZE)


def test_posterize_keeping_zero_bits_gives_black_instead_of_crashing():
    """RandAugment m9 mstd0.5 asks PosterizeIncreasing for 0 bits at magnitude 10; Pillow 13 raises on 0 bits."""
    transform = train_transform(AugmentConfig(), SIZE)
    rand_augment = next(step for step in transform.transforms if hasattr(step, "ops"))
    op = next(op for op in rand_augment.ops if op.name == "PosterizeIncreasing")
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
    image = Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8))
    assert np.array_equal(np.asarray(op(image)), np.zeros((8, 8, 3), dtype=np.uint8))
    op.magnitude = 5  # 4 - int(5 / 10 * 4) = 2 bits kept: 200 = 0b11001000 -> 0b11000000
    assert np.asarray(op(image)).max() == 192


# --- eval loader ------------------------------------------------------------------------------------


def test_eval_loader_order_indices_and_images(tree):
    aug = AugmentConfig()
    loader = build_eval_loader(_data(tree, eval_batch_size=4), aug, SIZE)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    indices = torch.cat([b[2] for b in batches])
    assert indices.tolist() == list(range(9))
    assert torch.cat([b[1] for b in batches]).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    path = sorted((tree / "val" / "bee").iterdir())[1]
    expected = eval_transform(aug, SIZE)(Image.open(path).convert("RGB"))
    assert torch.equal(batches[1][0][0], expected)  # position 4 = second file of the second class


def test_eval_shards_partition_the_split_and_limit_takes_the_first(tree):
    shards = [torch.cat([b[2] for b in build_eval_loader(_data(tree), AugmentConfig(), SIZE, rank=r, world_size=2)])
              for r in (0, 1)]  # fmt: skip
    assert shards[0].tolist() == [0, 2, 4, 6, 8] and shards[1].tolist() == [1, 3, 5, 7]
    limited = build_eval_loader(_data(tree), AugmentConfig(), SIZE, split="train", limit=5)
    assert torch.cat([b[2] for b in limited]).tolist() == [0, 1, 2, 3, 4]


# --- unreadable images ------------------------------------------------------------------------------


@pytest.fixture()
def bad_tree(tmp_path) -> tuple[Path, list[str]]:
    root = _make_tree(tmp_path, train_per_class=4, val_per_class=3)  # 12 good + 3 bad + 1 = 16 training files
    bad = _add_bad_files(root / "train" / "bee") + _add_bad_files(root / "val" / "cow")
    _write_images(root / "train" / "cow" / "more", 1, np.random.default_rng(5))
    return root, bad


def test_pil_itself_fails_on_the_bad_files(bad_tree):
    for path in bad_tree[1]:
        with pytest.raises((OSError, SyntaxError)), Image.open(path) as image:
            image.convert("RGB")


def test_training_drops_and_reports_unreadable_images(bad_tree):
    root, bad = bad_tree
    for workers in (0, 2):
        data = _data(root, workers=workers, max_bad_fraction=0.5)
        loader = build_train_loader(data, AugmentConfig(enabled=False), SIZE, 3, seed=0)
        batches = _epoch(loader, 0)
        reported = sorted(p for b in batches for p in b.bad_paths)
        assert reported == sorted(loader.bad_paths) == bad[:3]
        assert sum(len(b.targets) for b in batches) == 13  # every readable image once, none replaced
    mixed = _epoch(build_train_loader(data, AugmentConfig(repeated_aug=1), SIZE, 3, seed=0), 0)
    assert all(len(b.targets) % 2 == 0 for b in mixed)  # odd remainders lose one more sample for Mixup
    assert sorted(p for b in mixed for p in b.bad_paths) == bad[:3]


def test_empty_batches_are_skipped_but_counted(tmp_path):
    root = _make_tree(tmp_path, train_per_class=1, val_per_class=1)
    bad = _add_bad_files(root / "train" / "ant")
    # 3 readable + 3 unreadable files, batches of 2: find a seed whose first batch is two unreadable files
    data, aug = _data(root, batch_size=2, max_bad_fraction=0.9), AugmentConfig(enabled=False)
    loader = build_train_loader(data, aug, SIZE, 3, seed=0)
    is_bad = [path in bad for path, _ in loader.dataset.samples]
    seed = next(s for s in range(1000) if (o := epoch_order(6, seed=s, epoch=0, rank=0, world_size=1, repeats=1))
                and is_bad[o[0]] and is_bad[o[1]])  # fmt: skip
    batches = _epoch(build_train_loader(data, aug, SIZE, 3, seed=seed), 0)
    assert batches[0].index == 1  # batch 0 had nothing readable
    assert sorted(p for b in batches for p in b.bad_paths) == bad  # its paths came with the next batch


def test_too_many_unreadable_images_stop_the_run(bad_tree):
    root, bad = bad_tree
    loader = build_train_loader(_data(root, max_bad_fraction=0.1), AugmentConfig(enabled=False), SIZE, 3, seed=0)
    with pytest.raises(VitreduceError, match=r"[23] of 16 images .*max_bad_fraction=0\.1: .*bee"):
        _epoch(loader, 0)
    evaluation = build_eval_loader(_data(root, max_bad_fraction=0.5), AugmentConfig(), SIZE)
    indices = torch.cat([b[2] for b in evaluation]).tolist()
    assert sorted(evaluation.bad_paths) == bad[3:] and len(indices) == 9
    assert indices == [i for i, (path, _) in enumerate(evaluation.dataset.samples) if path not in bad]
    tracker = BadImageTracker(0.25, total=8)
    tracker.add(["a.jpg", "b.jpg"])
    with pytest.raises(VitreduceError, match=r"3 of 8 images .* a\.jpg, b\.jpg, c\.jpg"):
        tracker.add(["c.jpg"])
