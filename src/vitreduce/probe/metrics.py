"""Segmentation scores from a confusion matrix of integer pixel counts, as mmsegmentation defines them.

IoU of class c = TP / (TP + FP + FN); mIoU is the mean over the classes that occur in the ground truth
or the predictions (a class with neither is left out, not scored 0); pixel accuracy = correct pixels /
scored pixels; a class's accuracy = TP / its ground-truth pixels. Pixels labelled IGNORE_INDEX are never
counted. Counts are exact integers, so the scores are the same on every machine for the same predictions.
"""
from __future__ import annotations

from typing import Any

import torch


def confusion(pred: torch.Tensor, target: torch.Tensor, classes: int, ignore_index: int) -> torch.Tensor:
    """(classes, classes) int64 counts, rows the true class, columns the predicted one."""
    keep = target != ignore_index
    index = target[keep] * classes + pred[keep]
    return torch.bincount(index, minlength=classes * classes).reshape(classes, classes).cpu()


def scores(matrix: torch.Tensor, names: list[str]) -> dict[str, Any]:
    """mIoU, pixel accuracy and mean class accuracy (percent), and each class's IoU, accuracy and pixels."""
    m = matrix.to(torch.float64)
    tp, truth, predicted = m.diag(), m.sum(1), m.sum(0)
    union = truth + predicted - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.nan)
    acc = torch.where(truth > 0, tp / truth.clamp(min=1), torch.nan)
    per_class = [{"class": name, "iou": _percent(iou[k]), "accuracy": _percent(acc[k]), "pixels": int(truth[k])}
                 for k, name in enumerate(names)]
    scored = int(truth.sum())
    return {"miou": _percent(iou.nanmean()), "pixel_accuracy": _percent(tp.sum() / max(scored, 1)),
            "mean_accuracy": _percent(acc.nanmean()), "pixels": scored, "per_class": per_class,
            "confusion": matrix.tolist()}


def _percent(value: torch.Tensor) -> float | None:
    return None if torch.isnan(value) else round(float(value) * 100, 4)
