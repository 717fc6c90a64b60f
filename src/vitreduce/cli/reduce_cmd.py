"""Apply a reduction to a fresh model or to local full-width weights; write a vitreduce checkpoint.

Weights (--weights) are a timm state dict in a local .safetensors, .pth, .pt or .bin file. Pickle
files load only with torch's weights_only loader: a file that would run code is refused, never
unpickled. Nothing is downloaded.

Examples:
  vitreduce reduce vit_base_patch16_224 --reduction grouped --out grouped.safetensors
  vitreduce reduce vit_small_patch16_224 --weights vit_s16.safetensors
      --reduction shallow:keep=magnitude --out small_shallow.safetensors
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vitreduce.cli.args import add_model_arg_option, parse_model_args
from vitreduce.errors import VitreduceError
from vitreduce.reduction.accounting import describe
from vitreduce.reduction.checkpoint import save
from vitreduce.reduction.models import create_model
from vitreduce.reduction.spec import ReductionSpec
from vitreduce.reduction.surgery import reduce
from vitreduce.reduction.weights import load_into, read_state_dict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", help="timm model name, e.g. vit_base_patch16_224")
    parser.add_argument("--reduction", required=True, metavar="SPEC", help="reduction spec, e.g. grouped")
    parser.add_argument("--weights", type=Path, help="full-width weights to reduce (.safetensors, .pth, .pt, .bin)")
    parser.add_argument("--num-classes", type=int, help="classifier size (default: timm's, or the weights')")
    parser.add_argument("--img-size", type=int, help="input size (default: the model's)")
    add_model_arg_option(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed for fresh initialisation (default 0)")
    parser.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def run(args: argparse.Namespace) -> int:
    import torch

    spec = ReductionSpec.parse(args.reduction)
    if args.out.exists() and not args.force:
        raise VitreduceError(f"{args.out} exists; pass --force to overwrite it or choose another --out")
    if args.out.suffix != ".safetensors":
        raise VitreduceError(f"--out {args.out} must end in .safetensors")
    if not 0 <= args.seed < 2**63:
        raise VitreduceError(f"--seed {args.seed} is out of range; use 0 to 2**63 - 1")
    state = read_state_dict(args.weights) if args.weights else None
    kwargs = parse_model_args(args.model_arg)
    if args.img_size:
        kwargs["img_size"] = args.img_size
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    elif state is not None and "head.weight" in state and state["head.weight"].ndim == 2:
        kwargs["num_classes"] = state["head.weight"].shape[0]
    torch.manual_seed(args.seed)
    model = create_model(args.base, reduction=None, **kwargs)
    if state is not None:
        load_into(model, state, source=args.weights)
    reduce(model, spec)
    save(model, args.out)
    d = describe(model)
    source = f"weights {args.weights}" if args.weights else f"fresh init (seed {args.seed})"
    print(f"wrote {args.out}: {d.model} {d.reduction}, {d.params:,} params, {d.unique_mlps} unique MLPs, from {source}")
    return 0
