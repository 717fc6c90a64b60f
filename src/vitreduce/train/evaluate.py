"""Evaluating a saved model on an ImageFolder split (``vitreduce eval``), with timm's validate.py semantics."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from vitreduce.config_tree import read_yaml
from vitreduce.data.loaders import AugmentConfig, DataConfig, build_eval_loader
from vitreduce.errors import VitreduceError
from vitreduce.reduction import checkpoint
from vitreduce.train.distributed import resolve_device
from vitreduce.train.rundir import CONFIG
from vitreduce.train.step import evaluate


def resolve_model_file(path: Path, ema: bool) -> Path:
    """A model file, or a run directory's model.safetensors / model_ema.safetensors."""
    if path.is_dir():
        name = "model_ema.safetensors" if ema else "model.safetensors"
        if not (path / name).is_file():
            done = "" if (path / "done.json").is_file() else " (the run has not finished: see its checkpoints/)"
            raise VitreduceError(f"{path} has no {name}{done}")
        return path / name
    if ema:
        raise VitreduceError("--ema selects model_ema.safetensors of a run directory; pass the EMA file itself instead")
    return path


def run_augment(model_file: Path) -> tuple[AugmentConfig, str]:
    """The eval preprocessing of the run the file belongs to (its config.yaml), else the recipe's defaults."""
    for folder in list(model_file.resolve().parents)[:4]:
        if (folder / CONFIG).is_file():
            return AugmentConfig(**(read_yaml(folder / CONFIG).get("augment") or {})), str(folder / CONFIG)
    return AugmentConfig(), "defaults"


def evaluate_checkpoint(path: str | Path, data_root: str | Path, *, split: str = "val", ema: bool = False,
                        batch_size: int = 256, workers: int = 2, precision: str = "fp32",
                        device: str = "auto") -> dict[str, Any]:
    """Top-1 / top-5 (percent) and mean cross-entropy of a saved model on one split.

    Args:
        path: a vitreduce model file or a run directory.
        data_root: ImageFolder root holding ``split``/.
        split: split folder name.
        ema: with a run directory, evaluate its EMA weights.
        batch_size: images per batch.
        workers: data-loading worker processes.
        precision: 'fp32', 'bf16' or 'fp16' autocast.
        device: 'auto', 'cpu' or 'cuda'.
    """
    model_file = resolve_model_file(Path(path), ema)
    target = resolve_device(device)
    if precision == "fp16" and target.type != "cuda":
        raise VitreduceError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
    if batch_size < 1:
        raise VitreduceError(f"--batch-size must be >= 1, got {batch_size}")
    model = checkpoint.load(model_file, device=target)
    augment, source = run_augment(model_file)
    data = DataConfig(root=str(data_root), val_split=split, batch_size=batch_size, workers=workers)
    loader = build_eval_loader(data, augment, tuple(model.patch_embed.img_size), split=split)
    classes = len(loader.dataset.classes)
    if classes != model.num_classes:
        raise VitreduceError(f"{data_root}/{split} has {classes} classes, the model {model.num_classes}")
    result = evaluate(model, loader, precision, target)
    return {"checkpoint": str(model_file), "data": str(data_root), "split": split, "images": result.count,
            "preprocessing": source, **result.metrics()}
