"""The paper configs train with timm train.py's interpolation: bilinear or bicubic drawn per image."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image
from timm.data import transforms as timm_transforms
from torchvision.transforms import InterpolationMode

from vitreduce.data import AugmentConfig, train_transform
from vitreduce.train.config import load_config

REPO = Path(__file__).resolve().parents[1]


def test_paper_configs_train_with_random_interpolation_and_demo_configs_do_not():
    for path in sorted((REPO / "configs" / "paper").glob("*.yaml")):
        augment = load_config(path).augment
        assert (augment.train_interpolation, augment.interpolation) == ("random", "bicubic"), path.name
    for path in sorted((REPO / "configs" / "demo").glob("*.yaml")):
        assert load_config(path).augment.train_interpolation is None, path.name  # bicubic, as before


def _crop_modes(aug: AugmentConfig, monkeypatch, images: int = 40) -> list[InterpolationMode]:
    """The interpolation RandomResizedCrop used for each of ``images`` calls of the train transform."""
    used: list[InterpolationMode] = []
    original = timm_transforms.F.resized_crop

    def spy(img, top, left, height, width, size, interpolation, *args, **kwargs):
        used.append(interpolation)
        return original(img, top, left, height, width, size, interpolation, *args, **kwargs)

    monkeypatch.setattr(timm_transforms.F, "resized_crop", spy)
    transform = train_transform(aug, 16)
    image = Image.new("RGB", (24, 20), (120, 60, 30))
    random.seed(0)  # timm draws with Python's random, as each worker seeds it
    for _ in range(images):
        transform(image)
    return used


def test_random_train_interpolation_draws_bilinear_or_bicubic_per_image(monkeypatch):
    aug = AugmentConfig(train_interpolation="random", auto_augment=None, reprob=0.0)
    used = _crop_modes(aug, monkeypatch)
    assert len(used) == 40 and set(used) == {InterpolationMode.BILINEAR, InterpolationMode.BICUBIC}
    assert set(_crop_modes(AugmentConfig(auto_augment=None, reprob=0.0), monkeypatch)) == {InterpolationMode.BICUBIC}


@pytest.mark.parametrize(("train_interpolation", "resample"), [
    ("random", (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)),  # drawn per op call, as in timm
    (None, Image.Resampling.BICUBIC),
])
def test_randaugment_follows_the_train_interpolation(train_interpolation, resample):
    transform = train_transform(AugmentConfig(train_interpolation=train_interpolation), 16)
    ops = [op for step in transform.transforms for op in getattr(step, "ops", [])]
    assert ops and all(op.kwargs["resample"] == resample for op in ops)
