"""Distillation from a frozen teacher: the loss terms, the teacher itself, and what a run records of it.

The teacher is read as ``model.init_checkpoint`` is (a vitreduce model file, checked by its header rules, or
timm weights built as the config's model, unreduced), frozen and kept in eval mode: no dropout, no drop path,
no RNG draws, so a resumed run stays bitwise equal to an uninterrupted one. It runs once per micro-batch on
the student's own images (after the loader's augmentation, mixup and cutmix), under the run's precision,
without gradients. The terms (``DistillConfig``): the task loss on the targets, soft KL at a temperature,
the teacher's arg-max class as a hard label (DeiT), and the mean squared difference of every block's output
(the residual stream keeps its width under every reduction, so block i of the student is compared with block
i of the teacher, no projection).
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitreduce.errors import VitreduceError
from vitreduce.reduction import checkpoint
from vitreduce.reduction.accounting import describe
from vitreduce.reduction.surgery import vit_blocks
from vitreduce.reduction.weights import split_selector
from vitreduce.train.config import DistillConfig, TrainConfig
from vitreduce.train.distributed import all_mean
from vitreduce.train.model import check_init_checkpoint, check_same_classes, start_model

TERMS = ("task", "soft", "hard", "hidden")  # the loss terms, in the order they are logged


def check_teacher(config: TrainConfig) -> None:
    """What ``load_teacher`` would refuse, from headers only (before any file of a run is written): a missing
    file, an unknown format, a vitreduce header that describes no model vitreduce builds, timm weights whose
    names do not fit the config's architecture (checked when read), a vitreduce teacher that records other
    class names than the training folders."""
    if config.distill.teacher is None:
        return
    path, key = split_selector(config.distill.teacher)
    if not checkpoint.is_checkpoint(path):
        check_init_checkpoint(_teacher_model_config(config))
    elif key is not None:
        raise VitreduceError(f"distill.teacher {config.distill.teacher}: a vitreduce model file holds one set of "
                             f"weights; drop '#{key}'")
    else:
        check_same_classes(path, config.data, "distill.teacher")  # its outputs are paired with the labels


def _teacher_model_config(config: TrainConfig):
    """The model section that reads the teacher: the config's architecture, unreduced, no stochastic depth."""
    return config.model.model_copy(update={"reduction": "none", "init_checkpoint": config.distill.teacher,
                                           "drop_path_rate": 0.0, "drop_rate": 0.0})


def load_teacher(config: TrainConfig, device: torch.device | str = "cpu") -> nn.Module:
    """The teacher, frozen, in eval mode, on ``device``; refused when its classes or input size differ from the
    student's. Building it draws from torch's RNG inside a fork, so the run's streams are those without one."""
    path, _ = split_selector(config.distill.teacher)
    with torch.random.fork_rng(devices=[]):
        if checkpoint.is_checkpoint(path):
            teacher = checkpoint.load(path)  # its header builds it: any architecture, reduced or not
        else:
            teacher, report = start_model(_teacher_model_config(config))
            if report is not None and report.skipped:
                raise VitreduceError(f"distill.teacher {path}: its head does not match model.num_classes "
                                     f"{config.model.num_classes} ({', '.join(report.skipped)}); a teacher must "
                                     "predict the run's classes")
    if getattr(teacher, "num_classes", config.model.num_classes) != config.model.num_classes:
        raise VitreduceError(f"distill.teacher {path} predicts {teacher.num_classes} classes, model.num_classes is "
                             f"{config.model.num_classes}; a teacher must predict the run's classes")
    return teacher.to(device).eval().requires_grad_(False)


def build_distiller(config: TrainConfig, student: nn.Module, device: torch.device | str) -> Distiller | None:
    """The run's distiller (its teacher on ``device``), or None when ``distill.teacher`` is not set."""
    if config.distill.teacher is None:
        return None
    return Distiller(load_teacher(config, device), student, config.distill)


class Distiller:
    """The distillation loss of one run: ``loss(model, images, targets, task_loss)`` replaces the task loss
    alone, and each term's batch mean is kept until ``take`` (for steps.jsonl and the epoch's record).

    Args:
        teacher: the frozen teacher (``load_teacher``).
        student: the unwrapped student (its blocks are hooked when hidden states are matched).
        cfg: the distill section.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, cfg: DistillConfig):
        self.teacher, self.cfg = teacher, cfg
        self.teacher_s = 0.0  # seconds in the teacher's forward this epoch (the cost of distilling)
        self._sums: dict[str, torch.Tensor] = {}
        self._images = 0
        self._student_states: list[torch.Tensor] = []
        self._teacher_states: list[torch.Tensor] = []
        self._capturing = False  # the hooks keep block outputs only inside ``loss`` (not in evaluation)
        if tuple(teacher.patch_embed.img_size) != tuple(student.patch_embed.img_size):
            raise VitreduceError(f"distill.teacher takes {tuple(teacher.patch_embed.img_size)} images, the student "
                                 f"{tuple(student.patch_embed.img_size)}: both must see the same images")
        if cfg.hidden:
            student_blocks, teacher_blocks = vit_blocks(student), vit_blocks(teacher)
            if len(student_blocks) != len(teacher_blocks):
                raise VitreduceError(f"distill.hidden matches block outputs, but the teacher has {len(teacher_blocks)} "
                                     f"blocks and the student {len(student_blocks)}; set distill.hidden: 0")
            for blocks, states in ((student_blocks, self._student_states), (teacher_blocks, self._teacher_states)):
                for block in blocks:
                    block.register_forward_hook(lambda _m, _i, out, states=states: self._keep(states, out))

    def _keep(self, states: list[torch.Tensor], output: torch.Tensor) -> None:
        if self._capturing:
            states.append(output)

    def loss(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, task_loss: nn.Module) -> torch.Tensor:
        """The weighted sum of the terms for one micro-batch (a mean over its images), under the caller's autocast."""
        self._student_states.clear()
        self._teacher_states.clear()
        self._capturing = bool(self.cfg.hidden)
        try:
            started = _clock(images.device)
            with torch.no_grad():
                teacher_logits = self.teacher(images).float()
            self.teacher_s += _clock(images.device) - started
            logits = model(images)
        finally:
            self._capturing = False
        terms = self.terms(logits.float(), teacher_logits, targets, task_loss)
        self._student_states.clear()
        self._count(terms, len(images))
        return sum(getattr(self.cfg, name) * value for name, value in terms.items() if getattr(self.cfg, name))

    def terms(self, logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
              task_loss: nn.Module) -> dict[str, torch.Tensor]:
        """Each term's mean over the batch (``hidden``: over the blocks' outputs captured by the hooks)."""
        t = self.cfg.temperature
        soft = F.kl_div(F.log_softmax(logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                        reduction="batchmean", log_target=True) * (t * t)
        terms = {"task": task_loss(logits, targets), "soft": soft,
                 "hard": F.cross_entropy(logits, teacher_logits.argmax(dim=-1))}
        if self.cfg.hidden:
            pairs = zip(self._student_states, self._teacher_states, strict=True)
            terms["hidden"] = torch.stack([F.mse_loss(s.float(), d.float()) for s, d in pairs]).mean()
        return terms

    def _count(self, terms: dict[str, torch.Tensor], images: int) -> None:
        for name, value in terms.items():
            self._sums[name] = self._sums.get(name, 0.0) + value.detach().double() * images
        self._images += images

    def record(self, config: TrainConfig, loader, device: torch.device) -> dict[str, Any]:
        """run.json's "teacher" (``teacher_record``) with its accuracy on ``loader`` (the run's val split, every
        rank its shard: every rank calls this)."""
        from vitreduce.train.evaluate import evaluate

        result = evaluate(self.teacher, loader, config.precision, device)
        return teacher_record(config, self.teacher, result.metrics())

    def cost(self, images: int, train_time: float) -> dict[str, float]:
        """The epoch record's ``teacher_s`` (seconds this session spent in the teacher's forward this epoch) and
        ``img_s_without_teacher`` (the epoch's images over its training time less those seconds); resets."""
        spent, self.teacher_s = self.teacher_s, 0.0
        rest = train_time - spent
        return {"teacher_s": spent, "img_s_without_teacher": images / rest if rest > 0 else 0.0}

    def take(self) -> dict[str, float]:
        """Each term's mean over the images since the last call, averaged over ranks; the sums reset."""
        if not self._images:
            return {}
        names = list(self._sums)
        means = all_mean(torch.stack([self._sums[n] for n in names]) / self._images).tolist()
        self._sums, self._images = {}, 0
        return dict(zip(names, means, strict=True))


def _clock(device: torch.device) -> float:
    """Now, after the device's queued work (so the teacher's time is its own on a GPU, which runs ahead)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def teacher_record(config: TrainConfig, teacher: nn.Module, accuracy: dict[str, Any]) -> dict[str, Any]:
    """run.json's "teacher": its file and hash, what it is (params, MACs) and its accuracy on the val split."""
    path, _ = split_selector(config.distill.teacher)
    d = describe(teacher)
    return {"file": config.distill.teacher, "sha256": file_sha256(path), "model": d.model, "reduction": d.reduction,
            "params": d.params, "macs_linear": d.macs_linear, "macs_total": d.macs_total, "val": accuracy,
            "weights": {name: getattr(config.distill, name) for name in TERMS},
            "temperature": config.distill.temperature}
