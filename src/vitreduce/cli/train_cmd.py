"""Train a (reduced) ViT from a YAML config into a run directory; rerunning resumes it.

CONFIG files merge left to right (a later file overrides keys of an earlier one); --set overrides
single keys, each value parsed as YAML. The run directory receives config.yaml, run.json,
metrics.jsonl, checkpoints/, and at the end predictions.csv, model.safetensors,
model_ema.safetensors and done.json (docs/run-directory.md). Rerunning the same command continues
from the newest checkpoint; a finished run is left alone.

Examples:
  vitreduce train configs/demo/baseline.yaml
  vitreduce train configs/demo/grouped.yaml --set epochs=5 --out runs/grouped5
  torchrun --nproc_per_node 2 -m vitreduce train configs/paper/vit_b16_in1k_grouped.yaml \\
      --set data.root=/data/imagenet --out runs/grouped
  vitreduce train --resume --out runs/grouped
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configs", nargs="*", type=Path, metavar="CONFIG",
                        help="YAML config file(s), merged left to right (optional with --resume)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set optimizer.lr=0.002 (repeatable)")
    parser.add_argument("--out", type=Path, help="run directory (default: runs/<CONFIG names joined by '+'>)")
    parser.add_argument("--resume", action="store_true",
                        help="require an existing run in --out and continue it (CONFIG defaults to its config.yaml)")


def run(args: argparse.Namespace) -> int:
    import os

    from vitreduce.errors import VitreduceError
    from vitreduce.train.config import load_config
    from vitreduce.train.loop import train
    from vitreduce.train.rundir import CONFIG

    configs = list(args.configs)
    if not configs:
        if not (args.resume and args.out):
            raise VitreduceError("give a CONFIG file (or --resume --out RUN_DIR to continue a run)")
        configs = [args.out / CONFIG]
        if not configs[0].is_file():
            raise VitreduceError(f"--resume: {args.out} holds no run ({CONFIG} missing); nothing to resume")
    out = args.out or Path("runs") / "+".join(path.stem for path in configs)
    config = load_config(configs, args.overrides)
    try:
        train(config, out, resume=args.resume)
    except VitreduceError:
        if int(os.environ.get("RANK", "0")) != 0:
            return 2  # under torchrun rank 0 reports the error; the others stop quietly
        raise
    return 0
