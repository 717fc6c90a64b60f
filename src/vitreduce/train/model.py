"""Building the model a config describes, optionally starting from other weights (fine-tuning).

``model.init_checkpoint`` may be
- a vitreduce model checkpoint (``vitreduce.load``) of ``model.name``: one with the config's reduction
  is loaded as it is (the sharing rebuilt by the reduction); an unreduced one is loaded into the full
  model and the config's reduction is then applied to the trained weights (the paper's procedure);
  one reduced otherwise is refused;
- a timm state dict (.safetensors without a vitreduce header, or .pth/.pt/.bin/.pth.tar read with
  ``weights_only=True``; ``FILE#state_dict_ema`` picks timm's EMA weights) of the unreduced model:
  loaded into the full model, then the config's reduction is applied (as ``vitreduce reduce --weights`` does).
Either way a head whose size differs from ``model.num_classes`` keeps its fresh initialisation, and
``start_model`` says what was loaded, skipped and re-initialised (``InitReport``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vitreduce.data.config import DataConfig
from vitreduce.data.images import class_folder_names
from vitreduce.data.recorded import check_classes, recorded_classes
from vitreduce.errors import VitreduceError
from vitreduce.reduction import checkpoint
from vitreduce.reduction.models import create_model
from vitreduce.reduction.params import alias_groups
from vitreduce.reduction.spec import ReductionSpec
from vitreduce.reduction.surgery import reduce, scaling_line
from vitreduce.reduction.weights import PICKLE_SUFFIXES, copy_unique_tensors, listing, read_state_dict, split_selector
from vitreduce.train.config import ModelConfig


@dataclass
class InitReport:
    """What ``model.init_checkpoint`` put into the model (printed at the start of a run; run.json "init")."""

    source: str  # the file as configured (with '#KEY' when one was selected)
    loaded: int  # distinct tensors copied from it
    skipped: list[str] = field(default_factory=list)  # its tensors not copied (a head of another size)
    reinitialised: list[str] = field(default_factory=list)  # the model's tensors left freshly initialised
    reduction_applied: str | None = None  # applied to the full-width weights after loading them
    scaling: str | None = None  # what grouped multiplied the loaded MLPs by (``surgery.scaling_line``)

    def record(self) -> dict[str, Any]:
        return {"source": self.source, "loaded": self.loaded, "skipped": self.skipped,
                "reinitialised": self.reinitialised, "reduction_applied": self.reduction_applied,
                "scaling": self.scaling}

    def line(self) -> str:
        where = " into the full model" if self.reduction_applied else ""
        text = f"model.init_checkpoint: loaded {self.loaded} tensors from {self.source}{where}"
        if self.reduction_applied:
            text += f", then applied reduction {self.reduction_applied}"
        if self.skipped:
            text += f"; skipped {listing(self.skipped)} (shape differs)"
        if self.reinitialised:
            text += f"; re-initialised {listing(self.reinitialised)}"
        if self.scaling:
            text += f"; {self.scaling}"
        return text


def build_model(cfg: ModelConfig) -> nn.Module:
    """The config's model on CPU: fresh (from the current torch seed) or from ``cfg.init_checkpoint``."""
    return start_model(cfg)[0]


def start_model(cfg: ModelConfig, device: torch.device | str = "cpu") -> tuple[nn.Module, InitReport | None]:
    """The config's model and, when it starts from ``cfg.init_checkpoint``, what was loaded.

    Args:
        cfg: the model section of the config.
        device: where the model goes once built and loaded (it is built on CPU, from the current torch seed).
    """
    to_apply = check_init_checkpoint(cfg)
    if cfg.init_checkpoint is None:
        return create_model(cfg.name, reduction=cfg.reduction, **cfg.timm_kwargs()).to(device), None
    path, key = split_selector(cfg.init_checkpoint)
    source = checkpoint.load(path).state_dict() if checkpoint.is_checkpoint(path) else read_state_dict(path, key)
    model = create_model(cfg.name, reduction=None if to_apply else cfg.reduction, **cfg.timm_kwargs())
    report = _copy_weights(source, model, cfg.init_checkpoint)
    if to_apply:
        thin = any(step.strategy == "thin" for step in to_apply.steps)
        reduce(model, to_apply, trained=not thin)  # trained MLPs: scale=auto x1, relaxed deltas fit the residuals
        report.reduction_applied, report.scaling = str(to_apply), scaling_line(model)
        if thin:  # thin builds fresh MLPs over the loaded ones
            report.reinitialised += [n for n in _unique_names(model) if ".mlp." in n]
    return model.to(device), report


def check_init_checkpoint(cfg: ModelConfig, data: DataConfig | None = None) -> ReductionSpec | None:
    """What ``start_model`` refuses about ``cfg.init_checkpoint`` before reading any weights: a missing
    file or an unknown format; for a vitreduce checkpoint a header that does not describe a model vitreduce
    builds (``reduction.checkpoint.check_header``), names another model, or is reduced otherwise than the
    config. Headers only, so cheap: for the checks that run before any file of a run is written.

    With ``data`` (the run's data section), a vitreduce file whose head is kept (as many classes as the
    config) and that records other class names than the training folders gets a printed note: its output
    units are kept by position, so a renamed or reordered folder would be trained under another unit.

    Returns:
        the reduction to apply after loading the full-width weights (None: none, or the file has it already).
    """
    if cfg.init_checkpoint is None:
        return None
    path, key = split_selector(cfg.init_checkpoint)
    if not path.is_file():
        raise VitreduceError(f"model.init_checkpoint {path} does not exist")
    spec = ReductionSpec.parse(cfg.reduction)
    if not checkpoint.is_checkpoint(path):
        if path.suffix != ".safetensors" and not path.name.endswith(PICKLE_SUFFIXES):
            raise VitreduceError(f"model.init_checkpoint {path}: unsupported weights format; use a vitreduce "
                                 ".safetensors model file or timm weights (.safetensors, .pth, .pth.tar, .pt, .bin)")
        return spec if spec.steps else None
    if key is not None:
        raise VitreduceError(f"model.init_checkpoint {cfg.init_checkpoint}: a vitreduce model file holds one set of "
                             "weights; drop '#" + key + "' (a run's EMA weights are its model_ema.safetensors)")
    metadata = checkpoint.read_metadata(path)
    if metadata["base_model"] != cfg.name:
        raise VitreduceError(
            f"model.init_checkpoint {path} is {metadata['base_model']} with reduction {metadata['reduction']!r}, "
            f"the config asks for {cfg.name}: set model.name to {metadata['base_model']} to match"
        )
    if data is not None:
        _note_head_classes(recorded_classes(metadata, str(path)), path, cfg, data)
    try:
        return checkpoint.reduction_to_apply(metadata, spec, path, setting="model.reduction")
    except VitreduceError as err:
        raise VitreduceError(f"model.init_checkpoint: {err}") from None


def check_same_classes(path, data: DataConfig, what: str) -> None:
    """Refuse a vitreduce model file whose outputs must mean the training folders' classes (a distillation
    teacher; the model ``compress`` shrinks, whose head is kept) when it records other class names or another
    order: its outputs would be paired with shifted labels. Unlike a fine-tune's init_checkpoint (a note,
    ``_note_head_classes``), such a file is never meant for other classes."""
    recorded = recorded_classes(checkpoint.read_metadata(path), str(path))
    check_classes(recorded, class_folder_names(data), f"{what} {path}", f"{data.root}/{data.train_split}")


def _note_head_classes(recorded: list[str] | None, path, cfg: ModelConfig, data: DataConfig) -> None:
    """Say so when a kept head was trained on other class names than the training folders hold."""
    if recorded is None or len(recorded) != cfg.num_classes:
        return  # no names recorded, or a head of another size: freshly initialised
    found = class_folder_names(data)
    if found != recorded:
        moved = [f"{old!r} -> {new!r}" for old, new in zip(recorded, found, strict=False) if old != new]
        print(f"note: model.init_checkpoint {path} has a head trained on other classes than {data.root}/"
              f"{data.train_split} holds; its output units are kept by position ({', '.join(moved[:5])}"
              f"{', ...' if len(moved) > 5 else ''}). If these are the same classes, name the folders as the "
              "checkpoint's, in the same order", flush=True)


def _unique_names(model: nn.Module) -> list[str]:
    aliases = alias_groups(model)
    return [n for n in model.state_dict() if aliases.get(n, n) == n]


def _copy_weights(source: dict[str, torch.Tensor], model: nn.Module, name: str) -> InitReport:
    """Copy every unique tensor of ``model`` from ``source`` except a head of another size (kept fresh)."""
    aliases = alias_groups(model)
    source = {n: t for n, t in source.items() if aliases.get(n, n) == n}  # aliases repeat a stored tensor
    targets = model.state_dict()
    fresh = sorted(n for n in source if n.startswith("head.") and n in targets
                   and source[n].shape != targets[n].shape)
    copy_unique_tensors(model, {n: tuple(t.shape) for n, t in source.items()}, source.__getitem__, name, fresh)
    return InitReport(source=name, loaded=len(source) - len(fresh), skipped=list(fresh), reinitialised=list(fresh))
