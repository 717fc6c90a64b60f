"""Loss landscape of a checkpoint: 1D and 2D surfaces along filter-normalised random directions, and interpolation.

Evaluates the training loss (cross-entropy over a fixed, seeded subset of an ImageFolder split, eval
mode, with the preprocessing `vitreduce eval` uses: what the model file records, else its run's augment
settings, else the recipe's defaults, or --crop-pct/--interpolation/--mean/--std) at w + alpha d (1D,
along --directions random directions d, plotted as L(alpha) - L(0)) and w + alpha d1 + beta d2 (2D) on
an even grid over [-span, span], with Gaussian directions scaled filter by filter to the weights (Li et
al. 2018); biases and norm parameters are left still unless --include-bias-norm. With --other, also the
linear interpolation from CHECKPOINT (alpha 0) to --other (alpha 1), (1 - alpha) w_CHECKPOINT + alpha
w_OTHER for alpha in [-0.25, 1.25]: pass the peak epoch's checkpoint (RUN/checkpoints/best/) as
CHECKPOINT and the final one as --other for the paper's peak -> final path, as a study's analysis does.
Writes CSV grids and PNG plots, titled with the run, checkpoint and weights, to --out.

CHECKPOINT (and --other) is a model .safetensors written by vitreduce, or a run directory, whose
model.safetensors (or model_ema.safetensors with --ema) is used, as `vitreduce eval` does.

Examples:
  vitreduce landscape runs/grouped --data data/synth --steps 11 --directions 5
  vitreduce landscape runs/grouped/checkpoints/best/model_ema.safetensors \
      --other runs/grouped/model_ema.safetensors --data data/synth --out plots/grouped
"""
from __future__ import annotations

import argparse
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
    parser.add_argument("checkpoint", type=Path, help="model .safetensors written by vitreduce, or a run directory")
    parser.add_argument("--ema", action="store_true", help="with run directories: use their model_ema.safetensors")
    add_data_options(parser, split="train")
    parser.add_argument("--other", type=Path, default=None,
                        help="second checkpoint of the same architecture: also interpolate from CHECKPOINT (alpha 0, "
                             "e.g. the peak epoch's) to it (alpha 1, e.g. the final one)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: <checkpoint stem>_landscape beside the checkpoint)")
    parser.add_argument("--steps", type=int, default=21,
                        help="grid points per axis, odd (default 21; the 2D grid is steps x steps)")
    parser.add_argument("--span", type=float, default=1.0, help="alpha and beta range [-span, span] (default 1)")
    parser.add_argument("--directions", type=int, default=3,
                        help="random directions of the 1D surface, seeded --seed, --seed + 1, ... (default 3)")
    parser.add_argument("--include-bias-norm", action="store_true",
                        help="move biases and norm parameters too (default: zero direction for 1-D tensors)")
    parser.add_argument("--no-2d", action="store_true", help="skip the 2D surface (steps x steps evaluations)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the data subset and of the first direction (the next use seed + 1, ...; the 2D "
                             "surface's d2 is the 1D surface's second direction) (default 0)")
    parser.add_argument("--batches", type=int, default=4, help="fixed batches the loss averages (default 4)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    add_preprocessing_options(parser)
    add_device_option(parser)
    add_threads_option(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args: argparse.Namespace) -> int:
    from vitreduce.device import resolve_device
    from vitreduce.reduction.checkpoint import load
    from vitreduce.sharpness import landscape
    from vitreduce.sharpness.progress import ConsoleProgress
    from vitreduce.train.evaluate import resolve_model_file

    landscape.grid(args.steps, args.span)  # refuse a bad grid before loading anything
    if args.directions < 1:
        raise VitreduceError(f"--directions must be >= 1, got {args.directions}")
    device = resolve_device(args.device, "--device")
    # A run directory's model file, as `vitreduce eval` reads it.
    model_file = resolve_model_file(args.checkpoint, args.ema)
    other_file = resolve_model_file(args.other, args.ema) if args.other is not None else None
    model, preprocessing, batches = _model_and_batches(args, model_file, device)
    other = load(other_file, device=device) if other_file is not None else None
    if other is not None:
        landscape.check_same_architecture(model, other)
    out = args.out or model_file.with_name(f"{model_file.stem}_landscape")
    alphas = landscape.interpolation_alphas(args.steps)
    evaluations = (args.steps * args.directions + (0 if args.no_2d else args.steps**2)
                   + (len(alphas) if other is not None else 0))
    print(f"{model_file}: {evaluations} loss evaluations on {args.batches} batches x {args.batch_size} images "
          f"of {args.data}/{args.split} (seed {args.seed}), eval mode, on {device}")
    print(f"preprocessing: {preprocessing.describe()}")
    progress = ConsoleProgress(evaluations, "evaluation", quiet=args.quiet)
    try:
        lines = landscape.surfaces_1d(model, batches, seed=args.seed, directions=args.directions, steps=args.steps,
                                      span=args.span, include_bias_norm=args.include_bias_norm, progress=progress)
        surface = None
        if not args.no_2d:
            d1, d2 = (landscape.random_direction(model, args.seed + i, include_bias_norm=args.include_bias_norm)
                      for i in (0, 1))
            surface = landscape.surface_2d(model, batches, d1, d2, steps=args.steps, span=args.span,
                                           progress=progress)
        interpolation = (landscape.interpolate(model, other, batches, alphas=alphas, progress=progress)
                         if other is not None else None)
    finally:
        progress.close()
    written = landscape.write_landscape(out, line=lines, surface=surface, interpolation=interpolation,
                                        title=describe_model_file(model_file),
                                        other_title=describe_model_file(other_file) if other is not None else "")
    center = lines[0].losses[len(lines[0].losses) // 2]
    rise = max(max(line.losses) for line in lines) - center
    print(f"loss at the checkpoint {center:.6g}; largest rise L(alpha) - L(0) over {len(lines)} direction(s): "
          f"{rise:.6g}")
    if interpolation is not None:
        by_alpha = dict(zip(interpolation.alphas, interpolation.losses, strict=True))
        between = max(loss for alpha, loss in by_alpha.items() if 0.0 <= alpha <= 1.0)
        print(f"interpolation: loss {by_alpha[0.0]:.6g} at alpha 0, {by_alpha[1.0]:.6g} at alpha 1, "
              f"max {between:.6g} for alpha in [0, 1]")
    print(f"wrote to {out}:")
    for path in written:
        print(f"  {path.name}")
    return 0


def _model_and_batches(args: argparse.Namespace, model_file: Path, device):
    """The model, its eval preprocessing (``eval_preprocessing_for``, the command line's on top) and the fixed
    batches of --data seen through it, the class folders checked against the classes the file records."""
    from vitreduce.data.recorded import recorded_classes
    from vitreduce.data.transforms import eval_preprocessing_for
    from vitreduce.reduction.checkpoint import load, read_metadata
    from vitreduce.sharpness.batches import load_batches

    header = read_metadata(model_file)
    preprocessing = eval_preprocessing_for(model_file, header, preprocessing_overrides(args))  # a bad one stops here
    model = load(model_file, device=device, finite=True)
    batches = load_batches(model, args.data, augment=preprocessing.augment, split=args.split, batches=args.batches,
                           batch_size=args.batch_size, seed=args.seed, device=device,
                           classes=recorded_classes(header, str(model_file)), model_file=str(model_file),
                           follow_links=args.follow_links)
    return model, preprocessing, batches


def describe_model_file(path: Path) -> str:
    """What a model file is, for plot titles: "grouped/seed0 peak (epoch 4, EMA weights)" for a study run's
    checkpoints/best, "<run> final (...)" for a run directory's model file, else the file name with the base
    model and reduction of its header."""
    from vitreduce.reduction.checkpoint import read_metadata

    header = read_metadata(path)
    details = ", ".join(([f"epoch {header['epoch']}"] if "epoch" in header else [])
                        + ([f"{'EMA' if header['weights'] == 'ema' else header['weights']} weights"]
                           if "weights" in header else []))
    run, which = path.parent, "final"
    if path.parent.parent.name == "checkpoints":
        run, which = path.parent.parent.parent, "peak" if path.parent.name == "best" else path.parent.name
    if not (run / "config.yaml").is_file():
        built = f"{header.get('base_model', '?')}, reduction {header.get('reduction', '?')}"
        return f"{path.name} ({built}{', ' + details if details else ''})"
    name = f"{run.parent.name}/{run.name}" if run.name.startswith("seed") else run.name
    return f"{name} {which}" + (f" ({details})" if details else "")
