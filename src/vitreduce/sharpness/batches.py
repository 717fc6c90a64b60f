"""The fixed batch set every sharpness and landscape estimate uses: a seeded subset of an ImageFolder split.

Drawn once with the model's eval transform (no augmentation), so an estimate is a function of the
weights alone and a result is reproducible.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

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
    import torchvision

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
    # torchvision's ImageFolder, not timm's reader: timm sorts class folders "naturally" (class10 after
    # class2), training (vitreduce.data) sorts them as strings, and the labels must mean the same here.
    try:
        dataset = torchvision.datasets.ImageFolder(str(root / split), transform=transform)
    except (FileNotFoundError, RuntimeError) as err:  # no class folders, or no images in them
        raise VitreduceError(f"cannot read an image dataset from {str(root / split)!r}: {err}") from None
    classes = len(dataset.class_to_idx)
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
        samples = [dataset[int(index)] for index in chunk]
        images = torch.stack([image for image, _ in samples]).to(device)  # (B, C, H, W)
        targets = torch.tensor([target for _, target in samples], dtype=torch.long, device=device)
        result.append((images, targets))
    return result


def _input_size(model: nn.Module) -> dict:
    """The model's own input size (timm's pretrained_cfg keeps the default one when img_size is overridden)."""
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is None or getattr(patch_embed, "img_size", None) is None:
        return {}
    height, width = patch_embed.img_size
    return {"input_size": (patch_embed.proj.in_channels, height, width)}
