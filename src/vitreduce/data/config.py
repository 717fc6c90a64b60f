"""The ``data:`` and ``augment:`` sections of a train config (the ``synth:`` section is in ``data.synth``).

Each field's rule is declared once beside it with ``_rule``, so every refusal reads the same way:
the dotted key, what is allowed, and the value given.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

from vitreduce.config_tree import Real, Whole, timm_checks

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
# Upper bounds that catch typos (an extra zero or three) before they become an out-of-memory error.
BATCH_MAX = 1 << 20  # images per rank and micro-batch
WORKERS_MAX = 1024  # loader processes
REPEATS_MAX = 64  # repeated augmentation and random-erasing counts
# Floats are finite and true/false is not a number (Real), integers are integers (Whole).
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


def _rule(section: str, *fields: str, ok: Callable[[Any], bool], message: str):
    """A pydantic field validator refusing a value for which ``ok`` is False (None always passes).

    Args:
        section: the config section, for the dotted key in the message.
        fields: the fields it checks.
        ok: the rule a (type-checked) value must satisfy.
        message: the error, formatted with ``key`` (``section.field``) and ``value``.
    """

    def check(cls, value, info):
        if value is not None and not ok(value):
            raise ValueError(message.format(key=f"{section}.{info.field_name}", value=value))
        return value

    return field_validator(*fields)(check)


def _one_of(section: str, field: str, choices: tuple[str, ...]):
    """A field validator accepting only ``choices``."""
    listed = ", ".join(choices)
    return _rule(section, field, ok=lambda v: v in choices, message=f"{{key}} must be one of {listed}, got {{value!r}}")


class DataConfig(BaseModel):
    """Where the images are and how they are batched."""

    model_config = _STRICT

    root: str  # ImageFolder root holding <train_split>/ and <val_split>/ (one folder per class), or a shard set
    format: str = "auto"  # folder, shards (vitreduce.data.shards), or auto: shards when root holds a shard set
    train_split: str = "train"
    val_split: str = "val"
    batch_size: Whole = 256  # per rank, per micro-batch
    eval_batch_size: Whole | None = None  # None: batch_size
    workers: Whole = 4
    pin_memory: bool = True  # only takes effect when CUDA is available
    max_bad_fraction: Real = 0.01  # fail once more than this fraction of an epoch's samples are unreadable
    follow_links: bool = False  # read links to image files outside root (a subset made of links elsewhere)

    _positive = _rule("data", "batch_size", "eval_batch_size", ok=lambda v: 1 <= v <= BATCH_MAX,
                      message=f"{{key}} must be in [1, {BATCH_MAX}], got {{value}}")
    _workers = _rule("data", "workers", ok=lambda v: 0 <= v <= WORKERS_MAX,
                     message=f"{{key}} must be in [0, {WORKERS_MAX}] (0 loads in the main process), got {{value}}")
    _fraction = _rule("data", "max_bad_fraction", ok=lambda v: 0.0 <= v < 1.0,
                      message="{key} must be in [0, 1), got {value}")
    _format = _one_of("data", "format", ("auto", "folder", "shards"))
    _non_empty = _rule("data", "root", "train_split", "val_split", ok=lambda v: bool(v.strip()),
                       message="{key} must not be empty")


class AugmentConfig(BaseModel):
    """Training augmentation and eval preprocessing; the defaults are the paper's recipe (timm's DeiT-style)."""

    model_config = _STRICT

    scale: tuple[Real, Real] = (0.08, 1.0)  # RandomResizedCrop area range
    ratio: tuple[Real, Real] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect range
    hflip: Real = 0.5
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: Real = 0.4  # timm's default; timm applies it only when auto_augment is None
    interpolation: str = "bicubic"  # eval resize, and training unless train_interpolation is set
    train_interpolation: str | None = None  # None: `interpolation`; timm's train.py default is "random"
    reprob: Real = 0.25
    remode: str = "pixel"
    recount: Whole = 1
    mixup: Real = 0.8  # mixup alpha; 0 = off
    cutmix: Real = 1.0  # cutmix alpha; 0 = off
    mixup_prob: Real = 1.0
    mixup_switch_prob: Real = 0.5
    mixup_mode: str = "batch"
    smoothing: Real = 0.1  # label smoothing (a loss setting: kept even when enabled=False)
    repeated_aug: Whole = 3  # repeated augmentation count; 1 = off
    crop_pct: Real = 0.9  # eval centre crop
    mean: tuple[Real, Real, Real] = (0.5, 0.5, 0.5)
    std: tuple[Real, Real, Real] = (0.5, 0.5, 0.5)
    enabled: bool = True  # False: eval transform for training too; no mixup/cutmix/erasing/repeats

    _probability = _rule("augment", "hflip", "reprob", "mixup_prob", "mixup_switch_prob", ok=lambda v: 0.0 <= v <= 1.0,
                         message="{key} is a probability, must be in [0, 1], got {value}")
    _non_negative = _rule("augment", "mixup", "cutmix", "color_jitter", ok=lambda v: v >= 0,
                          message="{key} must be >= 0 (0 turns it off), got {value}")
    _smoothing = _rule("augment", "smoothing", ok=lambda v: 0.0 <= v < 1.0,
                       message="{key} must be in [0, 1), got {value}")
    _count = _rule("augment", "recount", "repeated_aug", ok=lambda v: 1 <= v <= REPEATS_MAX,
                   message=f"{{key}} must be in [1, {REPEATS_MAX}] (1 = no repeats), got {{value}}")
    _crop_pct = _rule("augment", "crop_pct", ok=lambda v: 0.0 < v <= 1.0,
                      message="{key} must be in (0, 1], got {value}")
    _remode = _one_of("augment", "remode", ("pixel", "rand", "const"))
    _mixup_mode = _one_of("augment", "mixup_mode", ("batch", "pair", "elem"))
    _interpolation = _one_of("augment", "interpolation", _INTERPOLATIONS)
    _train_interpolation = _one_of("augment", "train_interpolation", (*_INTERPOLATIONS, "random"))

    @field_validator("auto_augment")
    @classmethod
    def _auto_augment(cls, value, info: ValidationInfo):
        if value and timm_checks(info):  # build it once so a typo fails here, not in a worker process mid-epoch
            from timm.data import create_transform

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
