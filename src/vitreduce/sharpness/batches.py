"""The fixed batch set every sharpness and landscape estimate uses: a seeded subset of an ImageFolder split.

Drawn once through the data path ``vitreduce eval`` uses (``vitreduce.data``: the same scan and class
order, the same image reader, the same eval transform built from the run's ``augment:`` settings),
so the analysis sees exactly the tensors evaluation sees, an estimate is a function of the weights
alone, and a result is reproducible.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vitreduce.data.config import AugmentConfig, DataConfig
from vitreduce.data.images import ImageFolderSamples
from vitreduce.data.pixels import refuse_gray_fill
from vitreduce.data.recorded import check_classes
from vitreduce.data.shards import ShardSamples, is_shard_set
from vitreduce.data.source import open_split
from vitreduce.data.transforms import eval_transform
from vitreduce.errors import VitreduceError

LossBatch = tuple[torch.Tensor, torch.Tensor]  # images (B, C, H, W), targets (B,)


def load_batches(model: nn.Module, data_dir: str | Path, *, augment: AugmentConfig | None = None,
                 split: str = "train", batches: int = 10, batch_size: int = 64, seed: int = 0,
                 device: str | torch.device = "cpu", classes: list[str] | None = None,
                 model_file: str = "the model", follow_links: bool = False) -> list[LossBatch]:
    """A fixed, seeded subset of an ImageFolder split, with the eval transform, loaded once.

    The subset is ``subset_indices``: the same seed gives the same images in the same batches.

    Args:
        model: the model to analyse (its input size sizes the transform; its ``num_classes`` must equal
            the number of class folders).
        data_dir: ImageFolder root (``data_dir/<split>/<class>/<image>``) or a shard set.
        augment: the eval preprocessing (interpolation, crop_pct, mean, std), normally the run's:
            ``vitreduce.data.transforms.eval_preprocessing_for(model_file).augment``. None: the recipe's
            defaults, ``AugmentConfig()``, as ``vitreduce eval`` uses for a file outside a run directory.
        split: the split folder (default ``train``: sharpness is of the training loss).
        batches: number of batches.
        batch_size: images per batch.
        seed: seed of the subset.
        device: where the batches are kept.
        classes: the class names the model file records (``data.recorded.recorded_classes``): the class
            folders must be these, in this order (None: not checked).
        model_file: the model file, named in messages.
        follow_links: read links to image files outside ``data_dir`` too (``data.follow_links``).
    """
    if batches < 1 or batch_size < 1:
        raise VitreduceError(f"--batches and --batch-size must be >= 1 (got {batches}, {batch_size})")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise VitreduceError(f"data directory {str(root)!r} does not exist")
    if not (root / split).is_dir() and not is_shard_set(root):  # a shard set's splits are checked when read
        raise VitreduceError(f"{str(root)!r} has no {split!r} folder; expected the ImageFolder layout "
                             f"DIR/{split}/<class>/<image> (choose the split with --split)")
    transform = eval_transform(augment or AugmentConfig(), _input_size(model))
    # The eval loader's dataset (vitreduce.data.loaders.build_eval_loader), not timm's: timm sorts class
    # folders "naturally" (class10 after class2), and the labels, the files counted and the pixels
    # (16-bit images, links, FIFOs) must be the ones training and evaluation use.
    refuse_gray_fill()
    dataset = open_split(DataConfig(root=str(root), follow_links=follow_links), split, transform)  # folder or shards
    found = len(dataset.classes)
    if found != getattr(model, "num_classes", None):
        raise VitreduceError(f"the model has {getattr(model, 'num_classes', None)} classes but "
                             f"{str(root / split)!r} has {found} class folders; use data of the model's task")
    if classes is not None:
        check_classes(classes, dataset.classes, model_file, str(root / split))
    needed = batches * batch_size
    if needed > len(dataset):
        raise VitreduceError(f"{batches} batches x {batch_size} = {needed} images, but {str(root / split)!r} has "
                             f"only {len(dataset)}; lower --batches or --batch-size")
    result = []
    for chunk in subset_indices(len(dataset), batches, batch_size, seed).split(batch_size):
        samples = [_read(dataset, int(index)) for index in chunk]
        images = torch.stack([image for image, _ in samples]).to(device)  # (B, C, H, W)
        targets = torch.tensor([target for _, target in samples], dtype=torch.long, device=device)
        result.append((images, targets))
    return result


def subset_indices(total: int, batches: int, batch_size: int, seed: int) -> torch.Tensor:
    """The positions (in ImageFolder order) of the fixed subset, batch after batch: ``(batches * batch_size,)``.

    Args:
        total: images in the split.
        batches: number of batches.
        batch_size: images per batch.
        seed: seed of the subset.
    """
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:batches * batch_size]


def _read(dataset: ImageFolderSamples | ShardSamples, index: int) -> tuple[torch.Tensor, int]:
    """One transformed image and its class; a file that cannot be read is refused, never replaced."""
    image, target, _, problem = dataset[(index, 0)]  # the eval transform draws nothing random
    if image is None:
        raise VitreduceError(f"{problem}: an image of the fixed subset cannot be read; repair or delete it")
    return image, target


def _input_size(model: nn.Module) -> tuple[int, int]:
    """The model's own input size, as ``vitreduce eval`` takes it (timm's pretrained_cfg keeps the default
    one when img_size is overridden)."""
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is None or getattr(patch_embed, "img_size", None) is None:
        raise VitreduceError(f"{type(model).__name__} has no patch_embed.img_size: the input size of the "
                             "analysis batches is a ViT's (a model built by vitreduce)")
    return tuple(patch_embed.img_size)
