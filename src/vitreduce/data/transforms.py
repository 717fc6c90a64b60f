"""Image transforms and the training loss that matches their targets: timm's, set from AugmentConfig.

Augmentation is timm's ``create_transform``; Mixup/CutMix (``vitreduce.data.loaders``) and label
smoothing decide which loss the targets need (``train_loss_fn``). ``eval_preprocessing_for`` says
which eval preprocessing belongs to a model file: the one its run trained and evaluated with (recorded
in the file's header, ``vitreduce.data.recorded``), so that ``vitreduce eval``, the sharpness analysis
and the loss landscapes all see the same tensors wherever the file lies.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image
from pydantic import ValidationError
from timm.data import auto_augment, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

from vitreduce.config_tree import kwargs_from, read_yaml
from vitreduce.data.config import AugmentConfig
from vitreduce.data.recorded import preprocessing_settings, recorded_preprocessing
from vitreduce.errors import VitreduceError

RUN_CONFIG = "config.yaml"  # the resolved config a run directory holds (written by vitreduce.train.rundir)
DEFAULTS = "defaults"  # the source of the recipe's preprocessing, AugmentConfig()
HEADER = "the model file's header"  # the source of the preprocessing a model file records


class EvalPreprocessing(NamedTuple):
    """The eval preprocessing of a model file, and where it was read."""

    augment: AugmentConfig
    source: str  # HEADER, the run's config.yaml, or DEFAULTS; then any command-line settings

    def settings(self) -> dict[str, Any]:
        """The fields the eval transform reads (``eval_transform``), JSON-ready."""
        return preprocessing_settings(self.augment)

    def record(self) -> dict[str, Any]:
        """What an analysis writes beside its result: the source and the settings."""
        return {"source": self.source, **self.settings()}

    def describe(self) -> str:
        """One line for a person: the settings and where they come from."""
        aug = self.augment
        where = ("the recipe's defaults (the file records none and is in no run directory; set them with "
                 "--crop-pct, --interpolation, --mean, --std)" if self.source == DEFAULTS else self.source)
        return (f"{aug.interpolation} resize, centre crop {aug.crop_pct:g}, mean {list(aug.mean)}, "
                f"std {list(aug.std)}, from {where}")


def eval_transform(aug: AugmentConfig, img_size: int | tuple[int, int]):
    """timm's eval preprocessing: resize, centre crop of ``aug.crop_pct``, normalise."""
    return create_transform(
        img_size, is_training=False, interpolation=aug.interpolation, mean=aug.mean, std=aug.std, crop_pct=aug.crop_pct
    )


def run_config_for(model_file: str | os.PathLike) -> Path | None:
    """The config.yaml of the run directory a model file lies in; None when it lies in none.

    A run's model files are ``RUN/model.safetensors``, ``RUN/model_ema.safetensors`` and
    ``RUN/checkpoints/<dir>/model*.safetensors`` (``<dir>`` an epoch folder or one of the ``last``,
    ``best`` and ``recovery`` links); a link is looked through both as named and as followed.
    """
    path = Path(model_file).expanduser().absolute()
    for file in dict.fromkeys((path, path.resolve())):
        folders = [file.parent]
        if file.parent.parent.name == "checkpoints":
            folders.append(file.parent.parent.parent)
        for folder in folders:
            if (folder / RUN_CONFIG).is_file():
                return folder / RUN_CONFIG
    return None


def eval_preprocessing_for(model_file: str | os.PathLike, header: dict[str, str] | None = None,
                           overrides: dict[str, Any] | None = None) -> EvalPreprocessing:
    """The eval preprocessing of a model file: what its header records (``data.recorded``), else its run
    directory's config.yaml ``augment:`` (files written before headers recorded it), else the recipe's
    defaults (``AugmentConfig()``); ``overrides`` (the command line's settings) on top.

    Args:
        model_file: a model .safetensors file, inside a run directory or not (``run_config_for``).
        header: the file's checked header metadata (``reduction.checkpoint.read_metadata``), None to skip it.
        overrides: eval settings to use instead ({"crop_pct": 1.0, ...}; None values are left out).
    """
    recorded = recorded_preprocessing(header or {}, str(model_file))
    found = EvalPreprocessing(recorded, HEADER) if recorded is not None else _from_run_config(model_file)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if not given:
        return found
    try:
        augment = AugmentConfig(**{**found.augment.model_dump(), **given})
    except ValidationError as err:
        raise VitreduceError("; ".join(f"--{str(e['loc'][0]).replace('_', '-') if e['loc'] else 'preprocessing'} "
                                       f"{e['input']!r}: " + e["msg"].removeprefix("Value error, ")
                                       for e in err.errors())) from None
    flags = ", ".join("--" + key.replace("_", "-") for key in sorted(given))
    return EvalPreprocessing(augment, f"{found.source}, with {flags} set on the command line")


def _from_run_config(model_file: str | os.PathLike) -> EvalPreprocessing:
    """The ``augment:`` section of the config.yaml of the run a model file lies in, else the defaults."""
    config = run_config_for(model_file)
    if config is None:
        return EvalPreprocessing(AugmentConfig(), DEFAULTS)
    section = read_yaml(config).get("augment") or {}
    problem = f"a mapping, found {type(section).__name__}" if not isinstance(section, dict) else ""
    if not problem:
        try:
            return EvalPreprocessing(AugmentConfig(**section), str(config))
        except ValidationError as err:
            problem = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
        except TypeError as err:  # keys that are not strings
            problem = str(err)
    raise VitreduceError(f"{config} (the run config beside {model_file}) has an augment section vitreduce cannot "
                         f"read ({problem}); repair it, or copy the model file out of the run directory to use the "
                         "recipe's defaults")


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
