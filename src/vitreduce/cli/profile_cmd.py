"""Measure throughput and memory of reduced variants side by side (default: none, grouped, shallow).

MODEL is a timm model name or a vitreduce checkpoint (its architecture is profiled with random
weights; default variants then: none and the checkpoint's own reduction). Variants are timed in one
process, interleaved (each repeat times every variant once), so machine drift cancels in the ratios;
peak memory is measured in a fresh process per variant (see vitreduce/efficiency/memory.py for what
it includes). Ratios are against the first variant.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vitreduce.cli.args import add_model_arg_option, add_threads_option, parse_model_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="timm model name (e.g. vit_base_patch16_224) or checkpoint")
    parser.add_argument("--reduction", action="append", metavar="SPEC", default=None,
                        help="a variant to profile; repeat for several, the first is the reference "
                             "(default: none, grouped, shallow; for a checkpoint: none and its own)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--precision", default="fp32",
                        help="fp32, bf16 (autocast) or fp16 (autocast + GradScaler, cuda only); default fp32")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    parser.add_argument("--mode", default="both", help="infer, train or both (default both)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile each variant (compile time is excluded: warm-up covers it)")
    parser.add_argument("--img-size", type=int, default=None, help="input size (default: the model's own)")
    add_model_arg_option(parser)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant and mode (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per variant and mode (default 2)")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the per-variant peak-memory processes (peak memory reported as null)")
    add_threads_option(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per variant")


def resolve_model(model: str) -> tuple[str, dict, list[str] | None]:
    """(timm base name, timm kwargs, default variants or None for the profiler's) for a name or a checkpoint."""
    from vitreduce.data.transforms import eval_preprocessing_for
    from vitreduce.reduction.checkpoint import read_checked_metadata

    path = Path(model)
    if not (path.suffix == ".safetensors" or path.is_file()):
        return model, {}, None
    metadata = read_checked_metadata(path)  # its header checked against its tensors, as eval checks it
    preprocessing = eval_preprocessing_for(path, metadata)
    print(f"input: random tensors at the model's size; no image is read, so no preprocessing is applied (the "
          f"file's eval preprocessing: {preprocessing.describe()})", file=sys.stderr)
    kwargs = json.loads(metadata["model_kwargs"])
    return metadata["base_model"], kwargs, list(dict.fromkeys(["none", metadata["reduction"]]))


def run(args: argparse.Namespace) -> int:
    from vitreduce.efficiency.profiler import profile_variants
    from vitreduce.efficiency.results import format_table

    base, kwargs, default_variants = resolve_model(args.model)
    kwargs.update(parse_model_args(args.model_arg))  # a checkpoint's architecture, --model-arg on top (as inspect)
    num_classes = kwargs.pop("num_classes", 1000)
    if args.compile:
        print("note: --compile: compilation runs during warm-up and is not timed", file=sys.stderr)
    profiles = profile_variants(
        base, args.reduction or default_variants, device=args.device, precision=args.precision,
        batch_size=args.batch_size, mode=args.mode, compile=args.compile, repeats=args.repeats,
        warmup=args.warmup, img_size=args.img_size, num_classes=num_classes, model_kwargs=kwargs,
        memory=not args.no_memory, progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if args.json:
        print(json.dumps([p.as_dict() for p in profiles], indent=2))
    else:
        print(format_table(profiles))
    return 0
