"""The segmentation probe's recipe: one typed object, checked before any work (``ProbeOptions``).

The defaults are the fixed recipe results are compared under (docs/dense-tasks.md): the backbone frozen
in eval mode; the patch tokens of the last block after the model's final norm; a linear head (BatchNorm,
then a 1x1 convolution: DINOv2's linear segmentation probe); AdamW, learning rate 1e-3 decaying to 0 on a
cosine over every step, weight decay 1e-4, batches of 16, 10 epochs, no augmentation; logits upsampled
bilinearly to the input size, cross-entropy ignoring label 255; scored on every labelled pixel of each
validation mask at its own size.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from vitreduce.config_tree import SEED_MAX
from vitreduce.errors import VitreduceError


@dataclass(frozen=True)
class ProbeOptions:
    """Settings of one probe; a resumed probe must have the same ones.

    Args:
        blocks: blocks (ViT/EVA) or stages (Swin) whose patch tokens feed the head, negative from the end.
        head: "linear" (BatchNorm + 1x1 conv) or "decoder" (two 3x3 conv-BN-ReLU layers of
            ``decoder_width`` channels, then a 1x1 conv).
        finetune: train the backbone too, at lr x ``backbone_lr_scale`` (default: frozen).
        norm: apply the model's final norm to the features.
    """

    blocks: tuple[int, ...] = (-1,)
    head: Literal["linear", "decoder"] = "linear"
    finetune: bool = False
    norm: bool = True
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    backbone_lr_scale: float = 0.1
    decoder_width: int = 128
    seed: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # the backbone's forward (autocast); the head trains in fp32
    classes: int | None = None  # None: the dataset marker's
    reduce_zero_label: bool | None = None  # None: the dataset marker's (ADE20K: True)

    def __post_init__(self):
        _check(bool(self.blocks) and len(set(self.blocks)) == len(self.blocks)
               and all(type(b) is int for b in self.blocks), "--blocks", "distinct block indices, e.g. -1 or 8,9,10,11")
        _check(self.head in ("linear", "decoder"), "--head", "linear or decoder")
        _check(1 <= self.epochs <= 10_000, "--epochs", "1 to 10000")
        _check(1 <= self.batch_size <= 4096, "--batch-size", "1 to 4096")
        _check(0 < self.lr <= 10, "--lr", "a positive learning rate up to 10")
        _check(0 <= self.weight_decay <= 1, "--weight-decay", "0 to 1")
        _check(0 < self.backbone_lr_scale <= 10, "backbone_lr_scale", "a positive factor up to 10")
        _check(1 <= self.decoder_width <= 4096, "--decoder-width", "1 to 4096")
        _check(0 <= self.seed <= SEED_MAX, "--seed", f"0 to {SEED_MAX}")
        _check(self.precision in ("fp32", "bf16", "fp16"), "--precision", "fp32, bf16 or fp16")
        _check(not (self.finetune and self.precision == "fp16"), "--precision",
               "fp32 or bf16 with --finetune (fp16 gradients of the backbone would need loss scaling)")

    def record(self) -> dict[str, Any]:
        """JSON-ready settings (what a resume compares)."""
        record = asdict(self)
        record["blocks"] = list(self.blocks)
        return record


def _check(ok: bool, flag: str, wanted: str) -> None:
    if not ok:
        raise VitreduceError(f"{flag}: use {wanted}")
