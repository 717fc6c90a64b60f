"""The segmentation probe: a head on a trained model's patch tokens, trained by a fixed recipe
(``options.ProbeOptions``) and scored by mIoU and pixel accuracy (``metrics``).

Seeded and resumable like training: the head's initial weights come from the seed; each epoch visits the
training images in ``data.sampling.epoch_order(seed, epoch)``; every step's random draws (a fine-tuned
backbone's drop-path) come from RNGs seeded by (seed, epoch, step); the learning rate is a pure function of
the step. After every epoch OUT/probe_state.pt (head, backbone when fine-tuned, optimizer, epoch, losses)
is replaced atomically, so a killed probe started again with the same command continues from its last
finished epoch and ends with exactly the results of an uninterrupted one. OUT/probe.json holds the
settings (checkpoint and its SHA-256, data, options); a rerun with other settings is refused.
OUT/results.json holds the scores, the confusion matrix and the settings.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from vitreduce.config_tree import differences
from vitreduce.console import Progress
from vitreduce.data.config import WORKERS_MAX
from vitreduce.data.sampling import derive_seed, epoch_order, seeded_rngs
from vitreduce.data.segmentation import IGNORE_INDEX, SegmentationSamples, dataset_classes, scan_pairs
from vitreduce.data.transforms import eval_preprocessing_for
from vitreduce.device import autocast, resolve_device
from vitreduce.errors import VitreduceError
from vitreduce.files import atomic_write, write_json
from vitreduce.locks import LOCK_FILE, RunLock
from vitreduce.probe.heads import block_features, build_head, upsampled
from vitreduce.probe.metrics import confusion, scores
from vitreduce.probe.options import ProbeOptions
from vitreduce.reduction.accounting import describe
from vitreduce.reduction.checkpoint import load
from vitreduce.reduction.params import unique_parameters

STATE, SETTINGS, RESULTS = "probe_state.pt", "probe.json", "results.json"
_HEAD_SEED = 0x5E6  # the head's initial weights: derive_seed(seed, _HEAD_SEED)


@dataclass
class _Task:
    model: nn.Module
    head: nn.Module
    optimizer: torch.optim.Optimizer
    train: SegmentationSamples
    val: SegmentationSamples
    options: ProbeOptions
    device: torch.device
    workers: int = 0


def run_segmentation_probe(model_file: str | os.PathLike, data_root: str | os.PathLike, out_dir: str | os.PathLike,
                           options: ProbeOptions | None = None, *, device: str = "auto", progress: str = "auto",
                           on_event: Callable[[str], None] | None = None, restart: bool = False,
                           workers: int = 0) -> dict[str, Any]:
    """Train and score the probe; returns the results (also in OUT/results.json).

    Args:
        model_file: a vitreduce model file.
        data_root: a segmentation dataset in the ADE20K layout (``data.segmentation``).
        out_dir: where the probe's state and results go; a finished probe there is returned as it is.
        options: the recipe (None: the documented defaults, ``ProbeOptions()``).
        device: 'auto', 'cpu' or 'cuda'.
        progress: 'auto', 'bar', 'lines' or 'none' (``console.Progress``).
        on_event: called with "epoch" after each epoch's state is saved (tests kill the probe there).
        restart: a probe in OUT with other settings is replaced (a study's analysis after its options
            changed) instead of refused.
        workers: data-loading processes (0: in this one); the batches, and so the results, are the same.
    """
    out, root, options = Path(out_dir), Path(data_root).expanduser(), options or ProbeOptions()
    if not 0 <= workers <= WORKERS_MAX:
        raise VitreduceError(f"--workers must be in [0, {WORKERS_MAX}] (0 loads in the main process), got {workers}")
    settings, task = _prepare(Path(model_file), root, options, resolve_device(device, "--device"))
    task.workers = workers
    lock = _lock(out)
    try:
        _claim(out, settings, restart)
        if (out / RESULTS).is_file():
            return json.loads((out / RESULTS).read_text())
        start = time.perf_counter()
        epoch, history = _resume(out, task)
        _train(task, out, epoch, history, Progress(progress, options.epochs, every_steps=10), on_event)
        result = {**settings, "model": describe(task.model).record(), "train_images": len(task.train),
                  "val_images": len(task.val), "train_loss": history, **evaluate(task, settings["classes"]),
                  "seconds_this_session": round(time.perf_counter() - start, 3)}
        write_json(out / RESULTS, result)
        return result
    finally:
        lock.release()


def _lock(out: Path) -> RunLock:
    """OUT (new, or holding a probe) made and locked: one process probes into it at a time."""
    if out.exists() and not (out / SETTINGS).is_file() and any(p.name != LOCK_FILE for p in out.iterdir()):
        raise VitreduceError(f"{out} exists, is not empty and holds no probe; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out)
    if not lock.acquire():
        raise VitreduceError(f"{out} is being probed by another process ({lock.holder()}); wait for it to finish "
                             "or choose another --out")
    return lock


def _prepare(model_file: Path, root: Path, options: ProbeOptions, device: torch.device) -> tuple[dict, _Task]:
    """Every check before work (data layout, mask sizes, classes, the model file), then the parts."""
    if not root.is_dir():
        raise VitreduceError(f"--data {root} is not a folder; pass a segmentation dataset in the ADE20K layout "
                             "(`vitreduce data synth DIR --segmentation` writes one)")
    names, reduce = dataset_classes(root, options.classes, options.reduce_zero_label)
    pairs = {split: scan_pairs(root, split) for split in ("training", "validation")}
    preprocessing = eval_preprocessing_for(model_file)
    model = load(model_file, device=device)
    size = tuple(model.patch_embed.img_size)
    data = {split: SegmentationSamples(p, size, preprocessing.augment.mean, preprocessing.augment.std, len(names),
                                       reduce, full_masks=split == "validation") for split, p in pairs.items()}
    head = _build_head(model, options, len(names), size, device)
    settings = {"task": "segmentation", "checkpoint": str(model_file), "checkpoint_sha256": _sha256(model_file),
                "data": str(root), "classes": names, "reduce_zero_label": reduce, "ignore_index": IGNORE_INDEX,
                "input_size": list(size), "preprocessing": preprocessing.record(), "options": options.record()}
    model.requires_grad_(options.finetune)
    groups = [{"params": list(unique_parameters(head)), "lr_scale": 1.0}]
    if options.finetune:
        groups.append({"params": list(unique_parameters(model)), "lr_scale": options.backbone_lr_scale})
    optimizer = torch.optim.AdamW(groups, lr=options.lr, weight_decay=options.weight_decay)
    return settings, _Task(model, head, optimizer, data["training"], data["validation"], options, device)


def _build_head(model: nn.Module, options: ProbeOptions, classes: int, size: tuple, device: torch.device) -> nn.Module:
    depth = len(model.layers) if hasattr(model, "layers") else len(model.blocks)
    if any(not -depth <= b < depth for b in options.blocks):
        raise VitreduceError(f"--blocks {list(options.blocks)}: the model has {depth} "
                             f"{'stages' if hasattr(model, 'layers') else 'blocks'} (use -{depth} to {depth - 1})")
    model.eval()
    with torch.no_grad():
        channels = block_features(model, torch.zeros(1, 3, *size, device=device), options.blocks, options.norm).shape[1]
    with seeded_rngs(derive_seed(options.seed, _HEAD_SEED)):
        return build_head(options.head, channels, classes, options.decoder_width).to(device)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _claim(out: Path, settings: dict[str, Any], restart: bool) -> None:
    """Write OUT/probe.json for a new probe; refuse (or with ``restart`` replace) one with other settings."""
    path = out / SETTINGS
    if path.is_file():
        before = json.loads(path.read_text())
        if before != settings and restart:
            for name in (RESULTS, STATE, SETTINGS):
                (out / name).unlink(missing_ok=True)
            write_json(path, settings)
        elif before != settings:
            changed = "; ".join(differences(before, settings)[:6])
            raise VitreduceError(f"{out} holds a probe with other settings ({changed}); choose another --out, or "
                                 "delete it to start over")
        return
    write_json(path, settings)


def _resume(out: Path, task: _Task) -> tuple[int, list[float]]:
    """(epochs done, their mean losses) from OUT/probe_state.pt, its weights loaded; (0, []) when new."""
    path = out / STATE
    if not path.is_file():
        return 0, []
    try:
        state = torch.load(path, map_location=task.device, weights_only=True)
        task.head.load_state_dict(state["head"])
        if task.options.finetune:
            task.model.load_state_dict(state["backbone"])
        task.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, KeyError, OSError, EOFError) as err:
        raise VitreduceError(f"{path} cannot be resumed from ({str(err)[:200]}); delete it to start the probe "
                             "over") from None
    return int(state["epoch"]), [float(v) for v in state["history"]]


def _save(out: Path, task: _Task, epoch: int, history: list[float]) -> None:
    state = {"epoch": epoch, "history": history, "head": task.head.state_dict(),
             "optimizer": task.optimizer.state_dict()}
    if task.options.finetune:
        state["backbone"] = task.model.state_dict()
    atomic_write(out / STATE, lambda tmp: torch.save(state, tmp))


def _collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Images stacked (B, 3, S, S); masks as a list (evaluation keeps each at its file's size)."""
    return torch.stack([i[0] for i in items]), [i[1] for i in items]


def _batches(dataset: SegmentationSamples, order: list[int], size: int, workers: int):
    """(images, masks) in ``order`` (``_collate``); items have no randomness, so workers change nothing."""
    batches = [order[start:start + size] for start in range(0, len(order), size)]
    if workers == 0:
        yield from (_collate([dataset[i] for i in batch]) for batch in batches)
        return
    yield from DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=_collate)


def _train(task: _Task, out: Path, epoch: int, history: list[float], progress: Progress, on_event) -> None:
    opts = task.options
    steps = math.ceil(len(task.train) / opts.batch_size)
    for e in range(epoch, opts.epochs):
        order = epoch_order(len(task.train), seed=opts.seed, epoch=e, rank=0, world_size=1, repeats=1)
        progress.start_epoch(e + 1, steps, 0)
        losses = []
        for step, (images, masks) in enumerate(_batches(task.train, order, opts.batch_size, task.workers)):
            lr = opts.lr * 0.5 * (1 + math.cos(math.pi * (e * steps + step) / (opts.epochs * steps)))
            with seeded_rngs(derive_seed(opts.seed, e, step)):  # (B, H, W) masks at the input size
                losses.append(_step(task, images.to(task.device), torch.stack(masks).to(task.device), lr))
            progress.update(1, len(images), losses[-1], lr)
        progress.end_epoch()
        history.append(sum(losses) / len(losses))
        _save(out, task, e + 1, history)
        if on_event is not None:
            on_event("epoch")


def _step(task: _Task, images: torch.Tensor, masks: torch.Tensor, lr: float) -> float:
    """One optimizer step of the head (and the backbone when fine-tuned); the mean loss over scored pixels."""
    task.head.train()
    task.model.train(task.options.finetune)
    for group in task.optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
    with torch.set_grad_enabled(task.options.finetune):
        features = _features(task, images)
    logits = upsampled(task.head(features), masks.shape[-2:])  # (B, classes, H, W)
    scored = int((masks != IGNORE_INDEX).sum())
    loss = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX, reduction="sum") / max(scored, 1)
    if not torch.isfinite(loss.detach()):
        raise VitreduceError(f"the probe's loss is {loss.item()}; lower --lr")
    task.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    task.optimizer.step()
    return loss.item()


def _features(task: _Task, images: torch.Tensor) -> torch.Tensor:
    """The backbone's features in the probe's precision, handed to the head in fp32."""
    with autocast(task.options.precision, task.device):
        return block_features(task.model, images, task.options.blocks, task.options.norm).float()


@torch.no_grad()
def evaluate(task: _Task, names: list[str]) -> dict[str, Any]:
    """Scores on the validation split (``metrics.scores``) and the mIoU of the best constant prediction."""
    task.model.eval()
    task.head.eval()
    matrix = torch.zeros(len(names), len(names), dtype=torch.int64)
    for images, masks in _batches(task.val, list(range(len(task.val))), task.options.batch_size, task.workers):
        features = _features(task, images.to(task.device))
        head_out = task.head(features)  # (B, classes, h, w) at the patch grid
        for logits, mask in zip(head_out, masks, strict=True):  # each scored at its file's own size
            pred = upsampled(logits[None], mask.shape[-2:]).argmax(1)[0].cpu()
            matrix += confusion(pred, mask, len(names), IGNORE_INDEX)
    truth = matrix.sum(1)
    present = int((truth > 0).sum())
    constant = float(truth.max()) / max(int(truth.sum()), 1) / max(present, 1) * 100  # all pixels one class
    return {**scores(matrix, names), "constant_miou": round(constant, 4)}
