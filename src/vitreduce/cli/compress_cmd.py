"""Compress a trained ViT: reduce its weights, relax the sharing if asked, distil from it, fine-tune.

TEACHER is the trained full-width model: a vitreduce model file (e.g. a baseline run's model_ema.safetensors;
its header gives the architecture) or timm weights (.safetensors, .pth, .pth.tar; FILE#state_dict_ema for
timm's EMA) with --model naming the architecture. The command writes the train config it runs (--config,
default RUN.yaml beside the run directory) so it can be edited and rerun with `vitreduce train`, trains the run
directory --out (rerunning resumes it), and prints the teacher's, the zero-shot student's and the trained
student's parameters, MACs and val top-1 side by side.

A grouped step gets scale=1.0 unless the spec names a scale: the 1/sqrt(n) rule (scale=auto) is for freshly
initialised MLPs, not trained ones (docs/compress.md).

Examples:
  vitreduce compress runs/baseline/model_ema.safetensors --reduction grouped:init=mean --relax 16
      --data data/synth --epochs 30 --out runs/compressed
  vitreduce compress vit_s16.safetensors --model vit_small_patch16_224 --reduction shallow --distill hard
      --data /data/imagenet --out runs/small_shallow --set data.batch_size=256
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vitreduce.cli.args import add_threads_option


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("teacher", metavar="TEACHER", help="the trained full-width model file")
    parser.add_argument("--model", help="timm architecture of TEACHER when it holds plain weights")
    parser.add_argument("--reduction", required=True, metavar="SPEC", help="reduction spec, e.g. grouped:init=mean")
    parser.add_argument("--relax", type=int, metavar="R",
                        help="rank of each block's delta on the shared MLP (grouped's relax=R; 0: plain sharing)")
    parser.add_argument("--distill", choices=("soft", "hard", "none"), default="soft",
                        help="distillation from TEACHER: soft (KL at temperature 3, DeiT's default), hard (its "
                             "arg-max labels), none (fine-tune on the labels only); default soft")
    parser.add_argument("--hidden", type=float, default=0.0, metavar="W",
                        help="weight of matching every block's output to the teacher's (default 0)")
    parser.add_argument("--data", required=True, metavar="DIR", help="ImageFolder root with train/ and val/")
    parser.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs (default 30)")
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    parser.add_argument("--config", type=Path, help="where to write the train config (default: RUN.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key of the written config, e.g. --set data.batch_size=64 (repeatable)")
    add_threads_option(parser)


def run(args: argparse.Namespace) -> int:
    from vitreduce.config_tree import apply_override
    from vitreduce.console import text_table
    from vitreduce.device import resolve_device
    from vitreduce.errors import VitreduceError
    from vitreduce.numbers import format_macs, macs_unit
    from vitreduce.train.compress import (
        before_training,
        comparison_rows,
        compress_tree,
        preflight,
        teacher_cost,
        trained_spec,
    )
    from vitreduce.train.config import dump, validate
    from vitreduce.train.loop import train

    if args.relax is not None and args.relax < 0:
        raise VitreduceError(f"--relax {args.relax}: a rank is 0 or more")
    if args.hidden < 0 or args.hidden != args.hidden:
        raise VitreduceError(f"--hidden {args.hidden}: a loss weight is 0 or more")
    spec = trained_spec(args.reduction, args.relax)
    tree = compress_tree(args.teacher, spec, str(Path(args.data).expanduser().resolve()), args.epochs, args.model,
                         args.distill, args.hidden)
    for item in args.overrides:
        apply_override(tree, item)
    config = validate(tree, source="vitreduce compress")
    written = args.config or args.out.with_name(args.out.name + ".yaml")
    preflight(config, args.out, written)
    written.parent.mkdir(parents=True, exist_ok=True)
    written.write_text(dump(config))
    print(f"wrote {written} (rerun with: vitreduce train {written} --out {args.out})", flush=True)
    before = before_training(config, resolve_device(config.device, "device:"))
    result = train(config, args.out)
    rows = comparison_rows(before, args.out, result.final)
    divisor, unit = macs_unit([row["macs_total"] for row in rows])
    print(text_table(["model", "reduction", "params", f"MACs ({unit})", "val top-1"],
                     [[r["model"], r["reduction"], f"{r['params']:,}", format_macs(r["macs_total"], divisor),
                       f"{r['top1']:.2f}"] for r in rows], numbers_right=True))
    cost = teacher_cost(args.out)
    if cost:
        print(cost)
    return 0
