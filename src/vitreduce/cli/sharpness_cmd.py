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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="model .safetensors written by vitreduce")
    parser.add_argument("--data", type=Path, required=True, help="ImageFolder root holding the split folder")
    parser.add_argument("--split", default="train", help="split folder under --data (default: train)")
    parser.add_argument("--batches", type=int, default=10, help="fixed batches the loss averages (default 10)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--top-k", type=int, default=1, help="top Hessian eigenvalues to find (default 1; 0: none)")
    parser.add_argument("--iters", type=int, default=100,
                        help="power iterations per eigenvalue (Lanczos: iterations) at most (default 100)")
    parser.add_argument("--method", choices=("power", "lanczos"), default="power",
                        help="eigenvalue method (default power: k + 2 model-sized vectors of memory; lanczos: "
                             "one per iteration, fewer products)")
    parser.add_argument("--tol", type=float, default=1e-3,
                        help="relative residual of an eigenvalue that counts as converged (default 1e-3)")
    parser.add_argument("--trace-samples", type=int, default=100,
                        help="Rademacher vectors for the Hutchinson trace (default 100; 0: no trace)")
    parser.add_argument("--rho", type=float, default=0.05, help="SAM radius (default 0.05)")
    parser.add_argument("--adaptive", action="store_true", help="also report ASAM (adaptive) sharpness")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data subset and random vectors (default 0)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device (default auto)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args: argparse.Namespace) -> int:
    import torch

    from vitreduce.errors import VitreduceError
    from vitreduce.reduction.checkpoint import load
    from vitreduce.sharpness.measures import ConsoleProgress, analyze_sharpness, check_options, load_batches

    check_options(top_k=args.top_k, max_iters=args.iters, tol=args.tol, trace_samples=args.trace_samples,
                  rho=args.rho, method=args.method)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise VitreduceError("--device cuda but no CUDA device is available; use --device cpu")
    model = load(args.checkpoint, device=device)
    fused = sum(bool(getattr(module, "fused_attn", False)) for module in model.modules())
    batches = load_batches(model, args.data, split=args.split, batches=args.batches, batch_size=args.batch_size,
                           seed=args.seed, device=device)
    # Text meant for a person goes to stderr under --json, so stdout stays one JSON object.
    info = sys.stderr if args.json else sys.stdout
    print(f"{args.checkpoint}: {args.batches} batches x {args.batch_size} images of {args.data}/{args.split} "
          f"(seed {args.seed}), eval mode, on {device}", file=info)
    print(f"fused attention disabled for double-backward in {fused} attention modules (timm's fused SDPA has "
          "no double backward on CPU)", file=info)
    eigen_products = args.iters * (args.top_k if args.method == "power" else min(args.top_k, 1))
    progress = ConsoleProgress(eigen_products + args.trace_samples, "HVP", quiet=args.quiet)
    try:
        result = analyze_sharpness(model, batches, top_k=args.top_k, max_iters=args.iters, tol=args.tol,
                                   trace_samples=args.trace_samples, rho=args.rho, adaptive=args.adaptive,
                                   seed=args.seed, method=args.method, progress=progress)
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
