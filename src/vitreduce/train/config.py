"""The training config: one typed tree, validated when loaded, saved with every run.

A config is YAML. Several files merge left to right (a later file overrides single keys of an
earlier one), then ``--set a.b=value`` overrides apply, each value parsed as YAML. Every section
forbids unknown keys: a typo or a wrong type fails before any work starts, naming the dotted key and
the closest valid ones. ``config.yaml`` in a run directory is the resolved tree (every default filled
in); reloading it gives the same config.
"""
from __future__ import annotations

import difflib
import functools
import os
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from vitreduce.config_tree import (
    SEED_MAX,
    WITHOUT_TIMM,
    Real,
    Whole,
    apply_override,
    differences,
    explain_error,
    merge,
    read_yaml,
    section_keys,
    timm_checks,
)
from vitreduce.data.config import AugmentConfig, DataConfig
from vitreduce.data.synth import SynthConfig
from vitreduce.errors import VitreduceError
from vitreduce.reduction.architecture import check_architecture, check_base_name, check_kwargs, check_name_form
from vitreduce.reduction.spec import ReductionSpec

_WEIGHT_INITS = ("", "jax", "jax_nlhb", "moco")
# More than a million epochs is a typo (10^24 was accepted once): the schedule is built for every epoch.
EPOCHS_MAX = 10**6
# Step counts (accumulation, logging and checkpoint intervals): far above any real run, below overflow.
STEPS_MAX = 10**9
# Adam's betas are decay rates: 1 or more never forgets, so [0, 1).
Beta = Annotated[Real, Field(ge=0, lt=1)]


def _stored_path(value: str | None, null_means: str) -> str | None:
    """A file setting as stored: absolute (``absolute_path``); an empty one refused, saying what null does."""
    if value is not None and not value.strip():
        raise ValueError(f"is empty; write null to {null_means}")
    return absolute_path(value)


class _Section(BaseModel):
    # Every float finite: an inf weight decay or warmup lr used to pass and then fail as a non-finite loss.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _known(value: str, names: list[str], kind: str) -> str:
    """``value`` when it is one of ``names``; else a ValueError naming the closest ones."""
    if value not in names:
        close = difflib.get_close_matches(value, names, n=3)
        raise ValueError(f"unknown {kind} {value!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    return value


class ModelConfig(_Section):
    """Which model: a timm ViT, its reduction and the timm kwargs that shape it."""

    name: str = "vit_base_patch16_224"  # any timm ViT name
    reduction: str = "none"  # a ReductionSpec string, stored canonical
    num_classes: Whole = Field(1000, ge=1)
    drop_path_rate: Real = Field(0.1, ge=0, lt=1)
    drop_rate: Real = Field(0.0, ge=0, lt=1)
    # Architecture overrides passed to timm.create_model; null keeps the named model's value. Upper
    # bounds, consistency (heads divide the width) and the size limit: reduction.architecture.
    img_size: Whole | None = Field(None, ge=1)
    patch_size: Whole | None = Field(None, ge=1)
    embed_dim: Whole | None = Field(None, ge=1)
    depth: Whole | None = Field(None, ge=1)
    num_heads: Whole | list[Whole] | None = None  # a list: one per stage (Swin)
    depths: list[Whole] | None = None  # blocks per stage (Swin)
    window_size: Whole | None = Field(None, ge=1)  # Swin's attention window
    mlp_ratio: Real | None = Field(None, gt=0)
    weight_init: str = ""  # timm's: '' (trunc normal), jax, jax_nlhb, moco
    # Fine-tuning: a vitreduce checkpoint or a timm state dict (.safetensors/.pth/.pth.tar; FILE#state_dict_ema
    # for timm's EMA weights) to start from; the head is re-initialised when its size differs from num_classes.
    # Stored absolute: a relative path is resolved against the current directory when the config is loaded.
    init_checkpoint: str | None = None

    @field_validator("name")
    @classmethod
    def _known_model(cls, value: str, info: ValidationInfo) -> str:
        if not timm_checks(info):
            return check_name_form(value)  # never a hub id; whether timm knows it is left out
        return check_base_name(value)  # a timm ViT-family name, never a hub id (VitreduceError is a ValueError)

    @field_validator("reduction")
    @classmethod
    def _canonical_reduction(cls, value: str) -> str:
        return str(ReductionSpec.parse(value))  # VitreduceError is a ValueError: pydantic reports it

    @field_validator("init_checkpoint")
    @classmethod
    def _absolute_init_checkpoint(cls, value: str | None) -> str | None:
        return _stored_path(value, "start from fresh weights")

    @field_validator("weight_init")
    @classmethod
    def _weight_init(cls, value: str) -> str:
        if value not in _WEIGHT_INITS:
            raise ValueError(f"must be one of {', '.join(repr(v) for v in _WEIGHT_INITS)}")
        return value

    def timm_kwargs(self) -> dict[str, Any]:
        """The kwargs for ``vitreduce.create_model`` (architecture overrides left unset are omitted)."""
        kwargs = {"num_classes": self.num_classes, "drop_path_rate": self.drop_path_rate, "drop_rate": self.drop_rate}
        for key in ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "depths", "window_size"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        if self.weight_init:
            kwargs["weight_init"] = self.weight_init
        return kwargs

    @model_validator(mode="after")
    def _buildable(self, info: ValidationInfo) -> ModelConfig:
        """The same checks as every model vitreduce builds: allowed values, heads dividing the width,
        patches tiling the image, at most VITREDUCE_MAX_PARAMS parameters (counted on the meta device);
        without timm (``config_tree.WITHOUT_TIMM``) the allowed values only."""
        if timm_checks(info):
            check_architecture(self.name, self.timm_kwargs(), source="")
        else:
            check_kwargs(self.timm_kwargs(), source="")
        return self


class OptimizerConfig(_Section):
    """timm's optimizer factory over unique parameters, plus accumulation and clipping."""

    name: str = "adamw"  # a timm optimizer name (timm.optim.list_optimizers())
    lr: Real = Field(1e-3, gt=0)  # used as given: not rescaled by the batch size
    weight_decay: Real = Field(0.05, ge=0)  # not applied to biases, norms, pos_embed, cls_token
    betas: tuple[Beta, Beta] | None = (0.9, 0.999)  # Adam-family only, each in [0, 1); null for others
    eps: Real | None = Field(1e-8, gt=0)
    momentum: Real = Field(0.9, ge=0, lt=1)  # SGD-family only; 1 or more grows the step without bound
    no_weight_decay: list[str] = []  # extra name patterns (fnmatch) without weight decay
    accum_steps: Whole = Field(1, ge=1, le=STEPS_MAX)  # micro-batches per optimizer step
    clip_grad: Real | None = Field(None, gt=0)  # max global grad norm; null: no clipping

    @field_validator("name")
    @classmethod
    def _known_optimizer(cls, value: str, info: ValidationInfo) -> str:
        if not timm_checks(info):
            return value
        from timm.optim import list_optimizers

        return _known(value, list_optimizers(), "timm optimizer")


class ScheduleConfig(_Section):
    """timm's create_scheduler_v2: per-epoch by default, as in timm's train.py."""

    name: Literal["cosine", "tanh", "step", "multistep", "poly"] = "cosine"
    warmup_epochs: Whole = Field(5, ge=0, le=EPOCHS_MAX)
    warmup_lr: Real = Field(1e-5, ge=0)
    min_lr: Real = Field(0.0, ge=0)
    cooldown_epochs: Whole = Field(0, ge=0, le=EPOCHS_MAX)
    decay_epochs: Real = Field(90, gt=0, le=EPOCHS_MAX)  # step schedule
    decay_milestones: list[Annotated[Whole, Field(ge=0, le=EPOCHS_MAX)]] = [90, 180, 270]  # multistep schedule
    decay_rate: Real = Field(0.1, gt=0)
    on_updates: bool = False  # step the schedule every optimizer update instead of every epoch


class EmaConfig(_Section):
    """Exponential moving average of the weights, updated once per optimizer step."""

    enabled: bool = True
    decay: Real = Field(0.9998, gt=0, lt=1)


class CheckpointConfig(_Section):
    """Training-state checkpoints under RUN_DIR/checkpoints (see docs/training.md)."""

    recovery_every_steps: Whole = Field(0, ge=0, le=STEPS_MAX)  # 0: no mid-epoch recovery checkpoints
    best_metric: Literal["auto", "ema_top1", "raw_top1"] = "auto"  # auto: EMA when enabled
    # Keep the model files of every K-th epoch as checkpoints/epoch-<E>/ (never pruned); 0: off.
    keep_every_epochs: Whole = Field(0, ge=0, le=EPOCHS_MAX)


class MlflowConfig(_Section):
    """Logging to MLflow (``pip install mlflow-skinny``; vitreduce.train.tracking)."""

    enabled: bool = False
    uri: str | None = None  # tracking URI: None = a local file store in RUN_DIR/mlruns; a folder, file:..., http(s)://
    experiment: str = Field("vitreduce", min_length=1)


class WandbConfig(_Section):
    """Logging to Weights & Biases (``pip install wandb``; vitreduce.train.tracking), into RUN_DIR/wandb."""

    enabled: bool = False
    project: str = Field("vitreduce", min_length=1)
    entity: str | None = None  # the W&B team or user; None: the account's default
    mode: Literal["offline", "online"] = "offline"  # offline: no network (`wandb sync RUN_DIR/wandb/...` later)


class LoggingConfig(_Section):
    """What a run prints and writes besides metrics.jsonl."""

    tensorboard: bool = False  # RUN_DIR/tensorboard event files, the config as hparams
    mlflow: MlflowConfig = MlflowConfig()
    wandb: WandbConfig = WandbConfig()
    progress: Literal["auto", "bar", "lines", "none"] = "auto"  # auto: a bar on a terminal, else lines
    every_steps: Whole = Field(50, ge=1, le=STEPS_MAX)  # optimizer steps between plain progress lines
    step_every: Whole = Field(10, ge=0, le=STEPS_MAX)  # optimizer steps between lines of steps.jsonl; 0: none


class DistillConfig(_Section):
    """Distillation from a teacher model (docs/compress.md). No teacher: off, and every weight unused.

    The loss is ``task x task loss + soft x KL(teacher || student at temperature T) x T^2 + hard x CE(student,
    teacher's arg-max class) + hidden x mean squared difference of every block's output``. Defaults are DeiT's
    soft distillation (0.5 task, 0.5 soft at T = 3); DeiT's hard distillation is ``soft: 0, hard: 0.5``.
    """

    # A vitreduce model file or timm weights (.safetensors/.pth/.pth.tar; FILE#state_dict_ema), read as
    # model.init_checkpoint reads them; a plain state dict is built as model.name with model's architecture
    # keys, unreduced. Stored absolute.
    teacher: str | None = None
    task: Real = Field(0.5, ge=0)
    soft: Real = Field(0.5, ge=0)
    temperature: Real = Field(3.0, gt=0)
    hard: Real = Field(0.0, ge=0)
    hidden: Real = Field(0.0, ge=0)

    @field_validator("teacher")
    @classmethod
    def _absolute_teacher(cls, value: str | None) -> str | None:
        return _stored_path(value, "train without a teacher")

    @model_validator(mode="after")
    def _some_loss(self) -> DistillConfig:
        if self.teacher is not None and not (self.task or self.soft or self.hard or self.hidden):
            raise ValueError("distill: every loss weight (task, soft, hard, hidden) is 0; set at least one above 0")
        return self


class FaultsConfig(_Section):
    """What to do when a step's loss or gradient is not finite."""

    nonfinite: Literal["halt", "skip"] = "halt"


class TrainConfig(_Section):
    """Everything one training run depends on."""

    seed: Whole = Field(42, ge=0, le=SEED_MAX)  # numpy and torch take 32-bit seeds
    epochs: Whole = Field(300, ge=1, le=EPOCHS_MAX)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # fp16 uses a GradScaler and needs CUDA
    compile: bool = False  # torch.compile the model
    # Built when a config is validated (validate_default), with its validation context: a default instance
    # made here would run the model checks, with timm, when this module is imported.
    model: ModelConfig = Field(default_factory=dict, validate_default=True)
    data: DataConfig
    augment: AugmentConfig = AugmentConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    ema: EmaConfig = EmaConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    logging: LoggingConfig = LoggingConfig()
    faults: FaultsConfig = FaultsConfig()
    distill: DistillConfig = DistillConfig()
    synth: SynthConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.precision == "fp16" and self.device == "cpu":
            raise ValueError("precision: fp16 needs a CUDA GPU (its GradScaler is CUDA-only), but device is cpu; "
                             "set precision: bf16 or fp32 (or device: cuda on a GPU machine)")
        if self.checkpoint.best_metric == "ema_top1" and not self.ema.enabled:
            raise ValueError("checkpoint.best_metric: ema_top1 needs ema.enabled: true (or use raw_top1/auto)")
        return self

    @property
    def best_metric(self) -> str:
        """'ema_top1' or 'raw_top1', with 'auto' resolved."""
        if self.checkpoint.best_metric == "auto":
            return "ema_top1" if self.ema.enabled else "raw_top1"
        return self.checkpoint.best_metric

    def to_dict(self) -> dict[str, Any]:
        """The resolved tree as plain YAML/JSON types."""
        return self.model_dump(mode="json")


# ---------------------------------------------------------------------------------------------
# Loading


def load_config(paths: str | os.PathLike | list, overrides: list[str] = ()) -> TrainConfig:
    """Read, merge, override and validate a config.

    Args:
        paths: one YAML file or several, merged left to right.
        overrides: ``dotted.key=value`` strings; the value is parsed as YAML (``lr=1e-3`` is a float,
            ``betas=[0.9,0.95]`` a list, ``init_checkpoint=null`` None).
    """
    paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    if not paths:
        raise VitreduceError("no config file given")
    tree: dict[str, Any] = {}
    for path in paths:
        tree = merge(tree, read_yaml(path))
    for item in overrides:
        apply_override(tree, item)
    return validate(tree, source=", ".join(str(p) for p in paths))


def validate(tree: dict[str, Any], source: str = "config", timm: bool = True) -> TrainConfig:
    """Validate a config tree; one VitreduceError listing every problem with its dotted key.

    Args:
        timm: False leaves out the checks that need timm and torch (``config_tree.WITHOUT_TIMM``).
    """
    try:
        return TrainConfig.model_validate(tree, context=None if timm else WITHOUT_TIMM)
    except ValidationError as err:
        # A section-level check's input is the whole section (the whole tree at the top): say what is
        # wrong without echoing it; its message names the keys.
        keys = functools.partial(section_keys, TrainConfig)
        problems = [explain_error(e, keys, loc=_location(e), show_input=not isinstance(e.get("input"), dict))
                    .removeprefix("(top level): ") for e in err.errors()]
        raise VitreduceError(f"invalid config ({source}):\n  " + "\n  ".join(problems)) from None


def _location(error: dict[str, Any]) -> list[str]:
    return [str(part) for part in error["loc"] if not str(part).endswith("Config")]  # drop union tags


# ---------------------------------------------------------------------------------------------
# Saving and comparing


def dump(config: TrainConfig) -> str:
    """The resolved config as YAML text (sections in definition order)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


# Keys that may change when a run resumes: they do not affect the weights or the metrics.
# data.max_bad_fraction only decides when unreadable images halt a run (they are skipped either way), so
# the halt's advice to raise it can be followed by resuming.
# checkpoint.keep_every_epochs only decides which epoch-end model files are kept as history.
RESUMABLE_CHANGES = ("logging.", "data.workers", "data.pin_memory", "data.max_bad_fraction",
                     "checkpoint.keep_every_epochs")


def changed_keys(old: dict[str, Any], new: dict[str, Any], also: tuple[str, ...] = ()) -> list[str]:
    """Lines ``key: old -> new`` for the settings that differ and would change a resumed run (keys starting
    with ``also`` left out too: ``("epochs",)`` when ``--extend`` continues a run to more epochs)."""
    model = old.get("model") if isinstance(old, dict) else None
    # init_checkpoint is stored absolute; older versions wrote it as given (relative to where train ran).
    if isinstance(model, dict) and isinstance(model.get("init_checkpoint"), str):
        old = {**old, "model": {**model, "init_checkpoint": absolute_path(model["init_checkpoint"])}}
    if isinstance(model, dict) and isinstance(new.get("model"), dict):  # Swin's keys, absent before them: null
        old = {**old, "model": {**{k: None for k in ("depths", "window_size") if k in new["model"]}, **old["model"]}}
    if isinstance(old, dict) and "distill" not in old and isinstance(new.get("distill"), dict):
        old = {**old, "distill": {**new["distill"], "teacher": None}}  # written before the section: no teacher
    data, new_data = (tree.get("data") if isinstance(tree, dict) else None for tree in (old, new))
    if isinstance(data, dict) and isinstance(new_data, dict) and "follow_links" in new_data:
        old = {**old, "data": {"follow_links": False, **data}}  # absent before it: links were never followed
    old, new = _with_data_format(old), _with_data_format(new)
    return differences(old, new, ignore=RESUMABLE_CHANGES + tuple(also))


def _with_data_format(tree: dict[str, Any]) -> dict[str, Any]:
    """``data.format`` filled in where a tree lacks it (configs from before shard sets, partial study trees):
    its default, auto, which reads the image folders they were made for."""
    data = tree.get("data") if isinstance(tree, dict) else None
    if isinstance(data, dict) and "format" not in data:
        return {**tree, "data": {**data, "format": "auto"}}
    return tree


def absolute_path(value: str | None) -> str | None:
    """A path made absolute against the current directory ('~' expanded); a '#KEY' selector after it is kept."""
    return None if value is None else os.path.abspath(os.path.expanduser(value))
