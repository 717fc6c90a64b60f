"""Evaluation with timm's validate.py semantics: ``evaluate`` (a model over an eval loader, summed over
ranks; the trainer's per-epoch eval) and ``evaluate_checkpoint`` (a saved model on an ImageFolder split,
``vitreduce eval``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from vitreduce.data import DataConfig, build_eval_loader
from vitreduce.data.images import folders_in
from vitreduce.data.recorded import check_classes, recorded_classes
from vitreduce.data.shards import is_shard_set
from vitreduce.data.transforms import eval_preprocessing_for
from vitreduce.device import Precision, autocast, resolve_device
from vitreduce.errors import VitreduceError
from vitreduce.reduction import checkpoint
from vitreduce.train.distributed import DistInfo, all_sum, gather_objects
from vitreduce.train.rundir import DONE
from vitreduce.train.state import EMA_MODEL, MODEL


@dataclass
class EvalResult:
    top1: float  # percent
    top5: float  # percent (top-k with k = min(5, classes))
    loss: float  # mean cross-entropy
    count: int  # images evaluated (over all ranks)
    indices: torch.Tensor | None = None  # (N,) dataset positions of this rank's images
    labels: torch.Tensor | None = None  # (N,) their true classes
    predictions: torch.Tensor | None = None  # (N,) arg-max class of each

    def metrics(self) -> dict[str, float]:
        return {"top1": self.top1, "top5": self.top5, "loss": self.loss}


@torch.no_grad()
def evaluate(model: nn.Module, loader, precision: Precision, device: torch.device,
             keep_predictions: bool = False) -> EvalResult:
    """Top-1, top-5 and cross-entropy over an eval loader (timm's validate.py semantics), summed over ranks.

    Args:
        model: the model to evaluate (switched to eval mode, restored after).
        loader: yields ``(images (B,C,H,W), targets (B,), indices (B,))``, disjoint shards per rank.
        precision: 'fp32', 'bf16' or 'fp16' (autocast, as in training).
        device: where the model is.
        keep_predictions: also return this rank's per-image arg-max predictions.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-1, top-k, count
    indices, labels, predictions = [], [], []
    try:
        for images, targets, positions in loader:
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with autocast(precision, device):
                logits = model(images)  # (B, K)
            logits = logits.float()
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices  # (B, k)
            hits = top.eq(targets[:, None])
            sums += torch.stack([
                F.cross_entropy(logits, targets, reduction="sum").double(),
                hits[:, 0].sum().double(),
                hits.any(dim=1).sum().double(),
                torch.tensor(len(targets), dtype=torch.float64, device=device),
            ])
            if keep_predictions:
                indices.append(positions.cpu())
                labels.append(targets.cpu())
                predictions.append(top[:, 0].cpu())
    finally:
        model.train(was_training)
    loss, top1, topk, count = all_sum(sums).tolist()
    if count == 0:
        raise VitreduceError("the eval split gave no readable images")
    kept = keep_predictions and indices
    return EvalResult(
        top1=100.0 * top1 / count,
        top5=100.0 * topk / count,
        loss=loss / count,
        count=int(count),
        indices=torch.cat(indices) if kept else None,
        labels=torch.cat(labels) if kept else None,
        predictions=torch.cat(predictions) if kept else None,
    )


def gather_predictions(result: EvalResult, info: DistInfo) -> tuple[torch.Tensor, ...] | None:
    """(indices, labels, predictions) of every rank's eval images on rank 0 (None elsewhere)."""
    parts = gather_objects((result.indices, result.labels, result.predictions), info)
    if not info.is_main:
        return None
    return tuple(torch.cat([p[i] for p in parts]) for i in range(3))


def resolve_model_file(path: Path, ema: bool) -> Path:
    """A model file, or a run directory's model.safetensors / model_ema.safetensors."""
    if path.is_dir():
        name = EMA_MODEL if ema else MODEL
        if not (path / name).is_file():
            done = "" if (path / DONE).is_file() else " (the run has not finished: see its checkpoints/)"
            raise VitreduceError(f"{path} has no {name}{done}")
        return path / name
    if ema:
        raise VitreduceError("--ema selects model_ema.safetensors of a run directory; pass the EMA file itself instead")
    return path


def _check_split(root: Path, split: str) -> None:
    """Refuse a missing --data root or --split folder, naming the folders that are there."""
    if not root.is_dir():
        raise VitreduceError(f"--data {root} is not a folder; pass an ImageFolder root holding the --split folder")
    if not (root / split).is_dir() and not is_shard_set(root):  # a shard set's splits are checked when read
        raise VitreduceError(f"--data {root} has no {split}/ folder ({folders_in(root)}): choose the split with "
                             f"--split NAME")


def evaluate_checkpoint(path: str | Path, data_root: str | Path, *, split: str = "val", ema: bool = False,
                        batch_size: int = 256, workers: int = 2, precision: Precision = "fp32",
                        device: str = "auto", preprocessing: dict[str, Any] | None = None,
                        follow_links: bool = False) -> dict[str, Any]:
    """Top-1 / top-5 (percent) and mean cross-entropy of a saved model on one split.

    Args:
        path: a vitreduce model file or a run directory.
        data_root: ImageFolder root holding ``split``/, or a shard set holding that split.
        split: split folder name.
        ema: with a run directory, evaluate its EMA weights.
        batch_size: images per batch.
        workers: data-loading worker processes.
        precision: 'fp32', 'bf16' or 'fp16' autocast.
        device: 'auto', 'cpu' or 'cuda'.
        preprocessing: eval settings to use instead of the file's ({"crop_pct": 1.0, ...}; ``eval_preprocessing_for``).
        follow_links: read links to image files outside ``data_root`` too (``data.follow_links``).

    Returns:
        the scores, with the preprocessing used and the class check's line.
    """
    model_file = resolve_model_file(Path(path), ema)
    target = resolve_device(device, "device:")
    if precision == "fp16" and target.type != "cuda":
        raise VitreduceError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
    if batch_size < 1:
        raise VitreduceError(f"--batch-size must be >= 1, got {batch_size}")
    try:
        data = DataConfig(root=str(data_root), val_split=split, batch_size=batch_size, workers=workers,
                          follow_links=follow_links)
    except ValidationError as err:  # the data section's messages name the setting (data.workers, ...)
        raise VitreduceError("; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())) from None
    _check_split(Path(data_root).expanduser(), split)
    header = checkpoint.read_metadata(model_file)
    # What the file records (else its run's config.yaml), as the sharpness and landscape analyses use it.
    used = eval_preprocessing_for(model_file, header, preprocessing)
    model = checkpoint.load(model_file, device=target, finite=True)
    loader = build_eval_loader(data, used.augment, tuple(model.patch_embed.img_size), split=split)
    classes = len(loader.dataset.classes)
    if classes != model.num_classes:
        raise VitreduceError(f"{data_root}/{split} has {classes} classes, the model {model.num_classes}")
    checked = check_classes(recorded_classes(header, str(model_file)), loader.dataset.classes, str(model_file),
                            f"{data_root}/{split}")
    result = evaluate(model, loader, precision, target)
    return {"checkpoint": str(model_file), "data": str(data_root), "split": split, "images": result.count,
            "preprocessing": used.record(), "preprocessing_text": used.describe(), "classes": checked,
            **result.metrics()}
