"""Building the model a config describes, optionally starting from other weights (fine-tuning).

``model.init_checkpoint`` may be
- a vitreduce model checkpoint (``vitreduce.load``): its model name and reduction must match the
  config's; the sharing is rebuilt by the reduction and every tensor but a mismatched head is loaded;
- a timm state dict (.safetensors without a vitreduce header, or .pth/.pt/.bin read with
  ``weights_only=True``) of the unreduced model: it is loaded into the full model, then the
  config's reduction is applied to it (as ``vitreduce reduce --weights`` does).
Either way a head whose size differs from ``model.num_classes`` keeps its fresh initialisation.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from vitreduce.errors import VitreduceError
from vitreduce.reduction import checkpoint
from vitreduce.reduction.models import create_model
from vitreduce.reduction.params import alias_groups
from vitreduce.reduction.spec import ReductionSpec
from vitreduce.reduction.surgery import reduce
from vitreduce.reduction.weights import copy_unique_tensors, read_state_dict
from vitreduce.train.config import ModelConfig


def build_model(cfg: ModelConfig) -> nn.Module:
    """The config's model on CPU: fresh (from the current torch seed) or from ``cfg.init_checkpoint``.

    Args:
        cfg: the model section of the config.
    """
    check_init_checkpoint(cfg)
    if cfg.init_checkpoint is None:
        return create_model(cfg.name, reduction=cfg.reduction, **cfg.timm_kwargs())
    path = Path(cfg.init_checkpoint)
    if _is_vitreduce(path):
        model = create_model(cfg.name, reduction=cfg.reduction, **cfg.timm_kwargs())
        _copy_weights(checkpoint.load(path).state_dict(), model, path)
        return model
    model = create_model(cfg.name, reduction=None, **cfg.timm_kwargs())
    _copy_weights(read_state_dict(path), model, path)
    return reduce(model, ReductionSpec.parse(cfg.reduction))


def check_init_checkpoint(cfg: ModelConfig) -> None:
    """What ``build_model`` refuses about ``cfg.init_checkpoint`` before reading any weights: a missing
    file, and for a vitreduce checkpoint a header that does not describe a model vitreduce builds
    (``reduction.checkpoint.check_header``) or names another model or reduction than the config.
    Headers only, so cheap: for the checks that run before any file of a run is written."""
    if cfg.init_checkpoint is None:
        return
    path = Path(cfg.init_checkpoint)
    if not path.is_file():
        raise VitreduceError(f"model.init_checkpoint {path} does not exist")
    if not _is_vitreduce(path):
        return
    metadata = checkpoint.read_metadata(path)
    # Compared canonically: a header written before a spec's canonical order changed still matches.
    if (metadata["base_model"], str(ReductionSpec.parse(metadata["reduction"]))) != (cfg.name, cfg.reduction):
        raise VitreduceError(
            f"model.init_checkpoint {path} is {metadata['base_model']} with reduction {metadata['reduction']!r}, "
            f"the config asks for {cfg.name} with {cfg.reduction!r}: set model.name and model.reduction to match"
        )


def _is_vitreduce(path: Path) -> bool:
    if path.suffix != ".safetensors":
        return False
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("format") == checkpoint.FORMAT
    except Exception as err:  # noqa: BLE001 (any unreadable header is reported as such)
        raise VitreduceError(f"model.init_checkpoint {path} is not a readable safetensors file ({err})") from None


def _copy_weights(source: dict[str, torch.Tensor], model: nn.Module, path: Path) -> None:
    """Copy every unique tensor of ``model`` from ``source`` except a head of another size (kept fresh)."""
    aliases = alias_groups(model)
    source = {n: t for n, t in source.items() if aliases.get(n, n) == n}  # aliases repeat a stored tensor
    targets = model.state_dict()
    fresh = {n for n in source if n.startswith("head.") and n in targets and source[n].shape != targets[n].shape}
    copy_unique_tensors(model, {n: tuple(t.shape) for n, t in source.items()}, source.__getitem__, path, fresh)
