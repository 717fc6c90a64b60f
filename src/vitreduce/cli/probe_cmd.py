"""Probe a trained model on a dense task: `vitreduce probe segmentation CHECKPOINT|RUN_DIR --data DIR --out DIR`.

A head is trained on the patch tokens of the frozen model (or, with --finetune, with it) by a fixed
recipe, then scored on the validation split by mIoU and pixel accuracy (per class too); label 255 is
never scored. The defaults are the documented recipe (docs/dense-tasks.md): last block's tokens after
the final norm, linear head (BatchNorm + 1x1 conv), AdamW at 1e-3 on a cosine, weight decay 1e-4,
batches of 16, 10 epochs, no augmentation. The data is in the ADE20K layout
(images/{training,validation}/, annotations/{training,validation}/; `vitreduce data synth DIR
--segmentation` writes a built-in one). Seeded and resumable: the same command after a kill continues
from the last finished epoch and ends with the same results. Results: OUT/results.json and one line.

Examples:
  vitreduce data synth data/synth-seg --segmentation
  vitreduce probe segmentation runs/baseline --ema --data data/synth-seg --out probes/baseline
  vitreduce probe segmentation model.safetensors --data ADEChallengeData2016 --classes 150 \\
      --reduce-zero-label --blocks 8,9,10,11 --out probes/ade
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vitreduce.cli.args import add_device_option, add_threads_option
from vitreduce.errors import VitreduceError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    tasks = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    sub = tasks.add_parser("segmentation", help="linear (or small-decoder) segmentation probe: mIoU, pixel accuracy",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub.add_argument("checkpoint", type=Path, metavar="CHECKPOINT|RUN_DIR", help="model .safetensors or run directory")
    sub.add_argument("--data", type=Path, required=True, help="segmentation dataset root (ADE20K layout)")
    sub.add_argument("--out", type=Path, required=True, help="probe directory (new, or a probe to resume)")
    sub.add_argument("--ema", action="store_true", help="with a run directory: probe model_ema.safetensors")
    sub.add_argument("--blocks", default="-1", help="comma-separated blocks (Swin: stages) whose tokens feed the "
                                                    "head, negative from the end (default: -1)")
    sub.add_argument("--head", choices=("linear", "decoder"), default="linear", help="head (default: linear)")
    sub.add_argument("--decoder-width", type=int, default=128, help="channels of the decoder head (default: 128)")
    sub.add_argument("--finetune", action="store_true", help="train the backbone too, at --backbone-lr-scale x --lr")
    sub.add_argument("--backbone-lr-scale", type=float, default=0.1, help="with --finetune (default: %(default)s)")
    sub.add_argument("--no-norm", action="store_true", help="features without the model's final norm")
    sub.add_argument("--epochs", type=int, default=10, help="default: %(default)s")
    sub.add_argument("--batch-size", type=int, default=16, help="default: %(default)s")
    sub.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: %(default)s)")
    sub.add_argument("--weight-decay", type=float, default=1e-4, help="default: %(default)s")
    sub.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    sub.add_argument("--classes", type=int, default=None,
                     help="classes scored (default: the dataset marker's; ADE20K: 150 with --reduce-zero-label)")
    sub.add_argument("--reduce-zero-label", action="store_true", default=None,
                     help="label 0 is 'other' and not scored, k becomes k-1 (ADE20K's convention)")
    sub.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                     help="the backbone's forward under autocast; the head trains in fp32 (default: fp32)")
    sub.add_argument("--workers", type=int, default=2, help="data-loading processes, 0: none; results do not "
                                                           "depend on it (default: %(default)s)")
    sub.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto",
                     help="progress display with ETA (default: auto)")
    add_device_option(sub)
    add_threads_option(sub)
    sub.add_argument("--json", action="store_true", help="print the results as one JSON object")


def parse_blocks(text: str) -> tuple[int, ...]:
    """``"-1"`` / ``"8,9,10,11"`` -> block indices."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise VitreduceError(f"--blocks {text!r}: use comma-separated whole numbers, e.g. -1 or 8,9,10,11") from None


def run(args: argparse.Namespace) -> int:
    from vitreduce.config_tree import kwargs_from
    from vitreduce.probe import ProbeOptions, run_segmentation_probe
    from vitreduce.train.evaluate import resolve_model_file

    options = ProbeOptions(blocks=parse_blocks(args.blocks), norm=not args.no_norm,
                           **kwargs_from(args, "head", "finetune", "epochs", "batch_size", "lr", "weight_decay",
                                         "backbone_lr_scale", "decoder_width", "seed", "classes", "reduce_zero_label",
                                         "precision"))
    model_file = resolve_model_file(args.checkpoint, args.ema)
    result = run_segmentation_probe(model_file, args.data, args.out, options, device=args.device,
                                    progress=args.progress, workers=args.workers)
    print(json.dumps(result) if args.json else summary_line(result, args.out))
    return 0


def summary_line(result: dict, out: Path) -> str:
    """One line: the scores, what they are of, where the details are."""
    return (f"{result['checkpoint']} on {result['data']} ({result['val_images']} validation images, "
            f"{len(result['classes'])} classes): mIoU {result['miou']:.2f}  pixel acc {result['pixel_accuracy']:.2f}  "
            f"mean acc {result['mean_accuracy']:.2f}  (one constant class: mIoU {result['constant_miou']:.2f}); "
            f"{out / 'results.json'}")
