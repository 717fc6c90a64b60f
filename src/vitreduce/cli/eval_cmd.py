"""Evaluate a vitreduce checkpoint (model file or run directory): top-1, top-5 and loss on an ImageFolder split.

CHECKPOINT is a model .safetensors written by vitreduce (vitreduce.save / a run's model files), or a
run directory, whose model.safetensors (or model_ema.safetensors with --ema) is used. Images get
the model's eval transform as in timm's validate.py (resize, centre crop of crop_pct, mean/std): the
settings the model file records (a run writes its augment settings into every model file, and
`vitreduce reduce` carries them over), else its run directory's config.yaml, else the recipe's
defaults; --crop-pct, --interpolation, --mean and --std replace them. The class folders must be the
classes the file records (same names, same order): labels are folder positions.

Examples:
  vitreduce eval runs/baseline --data data/synth --ema
  vitreduce eval runs/baseline/checkpoints/best/model.safetensors --data data/synth --json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vitreduce.cli.args import (
    add_data_options,
    add_device_option,
    add_preprocessing_options,
    add_threads_option,
    preprocessing_overrides,
)
from vitreduce.errors import VitreduceError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="model .safetensors file or run directory")
    add_data_options(parser, split="val")
    parser.add_argument("--ema", action="store_true", help="with a run directory: evaluate model_ema.safetensors")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    parser.add_argument("--workers", type=int, default=2, help="data-loading worker processes (default 2)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast (default fp32)")
    add_preprocessing_options(parser)
    add_device_option(parser)
    add_threads_option(parser)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def run(args: argparse.Namespace) -> int:
    from vitreduce.data.config import BATCH_MAX, WORKERS_MAX
    from vitreduce.train.evaluate import evaluate_checkpoint

    if not 1 <= args.batch_size <= BATCH_MAX:
        raise VitreduceError(f"--batch-size must be in [1, {BATCH_MAX}], got {args.batch_size}")
    if not 0 <= args.workers <= WORKERS_MAX:
        raise VitreduceError(
            f"--workers must be in [0, {WORKERS_MAX}] (0 loads in the main process), got {args.workers}")

    result = evaluate_checkpoint(args.checkpoint, args.data, split=args.split, ema=args.ema, batch_size=args.batch_size,
                                 workers=args.workers, precision=args.precision, device=args.device,
                                 preprocessing=preprocessing_overrides(args), follow_links=args.follow_links)
    text = result.pop("preprocessing_text")
    if args.json:
        print(json.dumps(result))
    else:
        print(f"preprocessing: {text}")
        print(result["classes"])
        print(f"{result['checkpoint']} on {result['data']}/{result['split']} ({result['images']} images): "
              f"top1 {result['top1']:.2f}  top5 {result['top5']:.2f}  loss {result['loss']:.4f}")
    return 0
