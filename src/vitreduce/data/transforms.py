"""Image transforms and the training loss that matches their targets: timm's, set from AugmentConfig.

Augmentation is timm's ``create_transform``; Mixup/CutMix (``vitreduce.data.loaders``) and label
smoothing decide which loss the targets need (``train_loss_fn``).
"""
from __future__ import annotations

from PIL import Image
from timm.data import auto_augment, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

from vitreduce.config_tree import kwargs_from
from vitreduce.data.config import AugmentConfig


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
        interpolation=aug.train_interpolation or aug.interpolation,
        **kwargs_from(aug, "scale", "ratio", "hflip", "color_jitter", "auto_augment", "mean", "std",
                      re_prob="reprob", re_mode="remode", re_count="recount"),
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
