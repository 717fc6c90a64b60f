"""Apply a reduction to a fresh model or to local full-width weights; write a vitreduce checkpoint.

Weights (--weights) are an unreduced vitreduce model file (e.g. a baseline run's model_ema.safetensors;
its header gives the architecture, so BASE and --model-arg are not needed), or a timm state dict in a
local .safetensors, .pth, .pt or .bin file, or timm train.py's .pth.tar checkpoint ('state_dict'; with
--ema or FILE#state_dict_ema its 'state_dict_ema'). Pickle files load only with torch's weights_only
loader: a file that would run code is refused, never unpickled. Nothing is downloaded.

Examples:
  vitreduce reduce vit_base_patch16_224 --reduction grouped --out grouped.safetensors
  vitreduce reduce vit_small_patch16_224 --weights vit_s16.safetensors
      --reduction shallow:keep=magnitude --out small_shallow.safetensors
  vitreduce reduce --weights runs/baseline/model_ema.safetensors --reduction shallow --out shallow.safetensors
  vitreduce reduce vit_small_patch16_224 --weights output/train/model_best.pth.tar --ema
      --reduction grouped --out grouped.safetensors
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vitreduce.cli.args import add_model_arg_option, add_threads_option, parse_model_args
from vitreduce.errors import VitreduceError
from vitreduce.reduction import checkpoint
from vitreduce.reduction.accounting import describe
from vitreduce.reduction.inferred import vit_kwargs_from_weights
from vitreduce.reduction.models import create_model
from vitreduce.reduction.spec import ReductionSpec
from vitreduce.reduction.surgery import reduce, scaling_line
from vitreduce.reduction.weights import load_into, read_state_dict, split_selector


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", nargs="?",
                        help="timm model name, e.g. vit_base_patch16_224 (optional with a vitreduce --weights file)")
    parser.add_argument("--reduction", required=True, metavar="SPEC", help="reduction spec, e.g. grouped")
    parser.add_argument("--weights", metavar="FILE",
                        help="full-width weights to reduce: an unreduced vitreduce model file, or a timm state dict "
                             "(.safetensors, .pth, .pth.tar, .pt, .bin; FILE#state_dict_ema selects timm's EMA)")
    parser.add_argument("--ema", action="store_true",
                        help="take the EMA weights ('state_dict_ema') of a timm train.py checkpoint")
    parser.add_argument("--num-classes", type=int, help="classifier size (default: timm's, or the weights')")
    parser.add_argument("--img-size", type=int, help="input size (default: the model's)")
    add_model_arg_option(parser, weights_option=True)
    parser.add_argument("--seed", type=int, default=0, help="seed for fresh initialisation (default 0)")
    parser.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    add_threads_option(parser)


def run(args: argparse.Namespace) -> int:
    import torch

    spec = ReductionSpec.parse(args.reduction)
    if args.out.exists() and not args.force:
        raise VitreduceError(f"{args.out} exists; pass --force to overwrite it or choose another --out")
    if args.out.suffix != ".safetensors":
        raise VitreduceError(f"--out {args.out} must end in .safetensors")
    if not 0 <= args.seed < 2**63:
        raise VitreduceError(f"--seed {args.seed} is out of range; use 0 to 2**63 - 1")
    path, key = split_selector(args.weights) if args.weights else (None, None)
    if args.ema:
        if path is None or key not in (None, "state_dict_ema"):
            raise VitreduceError("--ema selects the EMA weights of a --weights checkpoint; give --weights FILE")
        key = "state_dict_ema"
    torch.manual_seed(args.seed)
    header: dict[str, str] = {}
    if path is not None and checkpoint.is_checkpoint(path):
        model, header = _from_vitreduce_file(args, path, key, spec)
    else:
        model = _from_timm_weights(args, path, key)
    reduce(model, spec, trained=path is not None)  # scale=auto: x1 on trained MLPs; relax=R: deltas from residuals
    checkpoint.save(model, args.out, metadata=header)
    d = describe(model)
    source = f"weights {args.weights}" if args.weights else f"fresh init (seed {args.seed})"
    if args.ema:
        source += " (EMA)"
    print(f"wrote {args.out}: {d.model} {d.reduction}, {d.params:,} params, {d.unique_mlps} unique MLPs, from {source}")
    if line := scaling_line(model):
        print(line)
    if header:
        print(f"kept from {path}: its {' and '.join(k.replace('_', ' ') for k in sorted(header))}")
    return 0


def _from_vitreduce_file(args: argparse.Namespace, path: Path, key: str | None, spec: ReductionSpec):
    """The unreduced model a vitreduce file holds, its architecture read from the file's header, and the
    header entries the reduced file keeps: the class names and eval preprocessing (from the file, or its
    run's config.yaml for a file written before headers recorded it)."""
    from vitreduce.data.recorded import carried, header_entries
    from vitreduce.data.transforms import DEFAULTS, eval_preprocessing_for

    metadata = checkpoint.read_metadata(path)
    if key is not None:
        drop = "--ema" if args.ema else "#" + key
        raise VitreduceError(f"--weights {path} is a vitreduce model file holding one set of weights; drop {drop} "
                             "(a run's EMA weights are its model_ema.safetensors)")
    given = [flag for flag, value in (("--model-arg", args.model_arg), ("--img-size", args.img_size),
                                      ("--num-classes", args.num_classes is not None)) if value]
    if given:
        raise VitreduceError(f"--weights {path} is a vitreduce model file: its header gives the architecture; "
                             f"drop {', '.join(given)}")
    if args.base and args.base != metadata["base_model"]:
        raise VitreduceError(f"--weights {path} holds {metadata['base_model']}, not {args.base}; "
                             f"name {metadata['base_model']} or leave BASE out")
    if checkpoint.reduction_to_apply(metadata, spec, path) is None and spec.steps:
        raise VitreduceError(f"--weights {path} already has reduction {str(spec)!r}; nothing to do")
    preprocessing = eval_preprocessing_for(path, metadata)
    recorded = header_entries(None, preprocessing.augment) if preprocessing.source != DEFAULTS else {}
    return checkpoint.load(path, finite=True), {**recorded, **carried(metadata)}


def _from_timm_weights(args: argparse.Namespace, path: Path | None, key: str | None):
    """The full model named by BASE and the architecture options, filled from a timm state dict if given."""
    if not args.base:
        raise VitreduceError("name the timm model to build (e.g. vitreduce reduce vit_base_patch16_224 ...); only a "
                             "vitreduce model file as --weights tells its own architecture")
    state = read_state_dict(path, key) if path is not None else None
    kwargs = parse_model_args(args.model_arg)
    if args.img_size:
        kwargs["img_size"] = args.img_size
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    if state is not None:  # what the tensors determine; the command line only for what they do not
        kwargs, line = vit_kwargs_from_weights(args.base, state, kwargs, str(path))
        if line:
            print(line)
    model = create_model(args.base, reduction=None, **kwargs)
    if state is not None:
        load_into(model, state, source=path)
    return model
