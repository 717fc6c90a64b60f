"""The fixed batch set every sharpness and landscape estimate uses: a seeded subset of an ImageFolder split.

Drawn once with the model's eval transform (no augmentation), so an estimate is a function of the
weights alone and a result is reproducible.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vitreduce.data.images import ImageFolderSamples, refuse_gray_fill
from vitreduce.errors import VitreduceError

LossBatch = tuple[torch.Tensor, torch.Tensor]  # images (B, C, H, W), targets (B,)


def load_batches(model: nn.Module, data_dir: str | Path, *, split: str = "train", batches: int = 10,
                 batch_size: int = 64, seed: int = 0, device: str | torch.device = "cpu") -> list[LossBatch]:
    """A fixed, seeded subset of an ImageFolder split, with the model's eval transform, loaded once.

    The subset is the first ``batches * batch_size`` indices of a seeded ``torch.randperm``, so the
    same seed gives the same images in the same batches.

    Args:
        model: the model to analyse (its timm data config and input size give the transform; its
            ``num_classes`` must equal the number of class folders).
        data_dir: ImageFolder root: ``data_dir/<split>/<class>/<image>``.
        split: the split folder (default ``train``: sharpness is of the training loss).
        batches: number of batches.
        batch_size: images per batch.
        seed: seed of the subset.
        device: where the batches are kept.
    """
    import timm.data

    if batches < 1 or batch_size < 1:
        raise VitreduceError(f"--batches and --batch-size must be >= 1 (got {batches}, {batch_size})")
    root = Path(data_dir)
    if not root.is_dir():
        raise VitreduceError(f"data directory {str(root)!r} does not exist")
    if not (root / split).is_dir():
        raise VitreduceError(f"{str(root)!r} has no {split!r} folder; expected the ImageFolder layout "
                             f"DIR/{split}/<class>/<image> (choose the split with --split)")
    config = timm.data.resolve_data_config(_input_size(model), model=model)
    transform = timm.data.create_transform(**config, is_training=False)
    # Training's scan and reader, not timm's: timm sorts class folders "naturally" (class10 after class2),
    # and the labels, the files counted and the pixels (16-bit images, links, FIFOs) must be the same here.
    refuse_gray_fill()
    dataset = ImageFolderSamples(root / split, transform, root=root)
    classes = len(dataset.classes)
    if classes != getattr(model, "num_classes", None):
        raise VitreduceError(f"the model has {getattr(model, 'num_classes', None)} classes but "
                             f"{str(root / split)!r} has {classes} class folders; use data of the model's task")
    needed = batches * batch_size
    if needed > len(dataset):
        raise VitreduceError(f"{batches} batches x {batch_size} = {needed} images, but {str(root / split)!r} has "
                             f"only {len(dataset)}; lower --batches or --batch-size")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:needed]
    result = []
    for chunk in order.split(batch_size):
        samples = [_read(dataset, int(index)) for index in chunk]
        images = torch.stack([image for image, _ in samples]).to(device)  # (B, C, H, W)
        targets = torch.tensor([target for _, target in samples], dtype=torch.long, device=device)
        result.append((images, targets))
    return result


def _read(dataset: ImageFolderSamples, index: int) -> tuple[torch.Tensor, int]:
    """One transformed image and its class; a file that cannot be read is refused, never replaced."""
    image, target, _, problem = dataset[(index, 0)]  # the eval transform draws nothing random
    if image is None:
        raise VitreduceError(f"{problem}: an image of the fixed subset cannot be read; repair or delete it")
    return image, target


def _input_size(model: nn.Module) -> dict:
    """The model's own input size (timm's pretrained_cfg keeps the default one when img_size is overridden)."""
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is None or getattr(patch_embed, "img_size", None) is None:
        return {}
    height, width = patch_embed.img_size
    return {"input_size": (patch_embed.proj.in_channels, height, width)}
