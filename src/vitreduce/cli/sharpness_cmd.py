"""Sharpness of a checkpoint's training loss: top Hessian eigenvalues, Hessian trace, SAM/ASAM sharpness.

Measures the paper's flat-minima hypothesis on a fixed, seeded subset of an ImageFolder split (the
model's eval transform, no augmentation; the model in eval mode), so a result is reproducible. The loss
is the cross-entropy averaged over --batches batches of --batch-size images. Derivatives are with
respect to the unique parameters: a shared MLP is one set of variables.

  top eigenvalues  the --top-k largest, from Hessian-vector products (double backward) by power
                   iteration with deflation, or by Lanczos (--method lanczos: far fewer products,
                   above all for k > 1, but one model-sized vector of memory per iteration). Each is
                   converged when its residual ||H y - theta y|| is at most --tol * |theta| within
                   --iters iterations: an eigenvalue lies within --tol relative of the estimate
  trace            Hutchinson's estimator over --trace-samples Rademacher vectors, +- standard error
  SAM sharpness    loss(w + rho g/||g||) - loss(w); with --adaptive also ASAM's loss(w + rho T^2 g/||T g||)
                   - loss(w), T = |w| (Kwon et al. 2021)

Examples:
  vitreduce sharpness runs/grouped/seed42/model.safetensors --data data/synth
  vitreduce sharpness model.safetensors --data data/imagenet --batches 10 --batch-size 64 --top-k 3 --json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vitreduce.cli.args import add_data_options, add_device_option


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vitreduce.sharpness.options import METHODS, SharpnessOptions

    default = SharpnessOptions()  # each option's flag is its field name: --top-k is top_k
    parser.add_argument("checkpoint", type=Path, help="model .safetensors written by vitreduce")
    add_data_options(parser, split=default.split)
    parser.add_argument("--batches", type=int, default=default.batches,
                        help=f"fixed batches the loss averages (default {default.batches})")
    parser.add_argument("--batch-size", type=int, default=default.batch_size,
                        help=f"images per batch (default {default.batch_size})")
    parser.add_argument("--top-k", type=int, default=default.top_k,
                        help=f"top Hessian eigenvalues to find (default {default.top_k}; 0: none)")
    parser.add_argument("--iters", type=int, default=default.iters,
                        help=f"power iterations per eigenvalue (Lanczos: iterations) at most (default {default.iters})")
    parser.add_argument("--method", choices=METHODS, default=default.method,
                        help=f"eigenvalue method (default {default.method}: k + 2 model-sized vectors of memory; "
                             "lanczos: one per iteration, fewer products)")
    parser.add_argument("--tol", type=float, default=default.tol,
                        help=f"relative residual of an eigenvalue that counts as converged (default {default.tol:g})")
    parser.add_argument("--trace-samples", type=int, default=default.trace_samples,
                        help=f"Rademacher vectors for the Hutchinson trace (default {default.trace_samples}; "
                             "0: no trace)")
    parser.add_argument("--rho", type=float, default=default.rho, help=f"SAM radius (default {default.rho:g})")
    parser.add_argument("--adaptive", action="store_true", help="also report ASAM (adaptive) sharpness")
    parser.add_argument("--seed", type=int, default=default.seed,
                        help=f"seed of the data subset and random vectors (default {default.seed})")
    add_device_option(parser)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args: argparse.Namespace) -> int:
    from vitreduce.device import resolve_device
    from vitreduce.reduction.checkpoint import load
    from vitreduce.sharpness.batches import load_batches
    from vitreduce.sharpness.measures import analyze_sharpness
    from vitreduce.sharpness.options import SharpnessOptions
    from vitreduce.sharpness.progress import ConsoleProgress

    # Refuse impossible options before loading anything.
    options = SharpnessOptions.checked(**{name: getattr(args, name) for name in SharpnessOptions.model_fields})
    device = resolve_device(args.device, "--device")
    model = load(args.checkpoint, device=device)
    fused = sum(bool(getattr(module, "fused_attn", False)) for module in model.modules())
    batches = load_batches(model, args.data, **options.subset(), device=device)
    # Text meant for a person goes to stderr under --json, so stdout stays one JSON object.
    info = sys.stderr if args.json else sys.stdout
    print(f"{args.checkpoint}: {args.batches} batches x {args.batch_size} images of {args.data}/{args.split} "
          f"(seed {args.seed}), eval mode, on {device}", file=info)
    print(f"fused attention disabled for double-backward in {fused} attention modules (timm's fused SDPA has "
          "no double backward on CPU)", file=info)
    progress = ConsoleProgress(options.planned_products(), "HVP", quiet=args.quiet)
    try:
        result = analyze_sharpness(model, batches, options, progress=progress)
    finally:
        progress.close()
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "split": args.split, **result.to_dict()}))
        return 0
    print(format_result(result))
    return 0


def format_result(result) -> str:
    """The result as a few aligned lines for a person.

    Args:
        result: a ``vitreduce.sharpness.SharpnessResult``.
    """
    lines = [f"loss             {result.loss:.6g}  ({result.parameters:,} unique parameters)"]
    if result.top_eigenvalues:
        parts = [f"{value:.6g} ({'converged' if done else 'NOT converged'}, {iters} iters)"
                 for value, done, iters in zip(result.top_eigenvalues, result.eigen_converged, result.iterations,
                                               strict=True)]
        lines.append("top eigenvalues  " + ", ".join(parts) + f"  [{result.method}, tol {result.tol:g}]")
        if result.eigen_shift is not None:
            lines.append(f"                 (the dominant eigenvalue was negative, {result.eigen_shift:.6g}: "
                         "the largest were found on the shifted Hessian)")
    if result.trace is not None:
        lines.append(f"trace            {result.trace:.6g} +- {result.trace_stderr:.3g} "
                     f"(Hutchinson, {result.trace_samples} Rademacher samples, +- standard error)")
    lines.append(f"SAM sharpness    {result.sam_sharpness:.6g}  (rho {result.rho:g})")
    if result.asam_sharpness is not None:
        lines.append(f"ASAM sharpness   {result.asam_sharpness:.6g}  (rho {result.rho:g}, T = |w|)")
    lines.append(f"time             {result.seconds:.1f} s")
    return "\n".join(lines)
