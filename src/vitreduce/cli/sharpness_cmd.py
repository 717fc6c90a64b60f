"""Sharpness of a checkpoint's training loss: top Hessian eigenvalues, Hessian trace, SAM/ASAM sharpness.

Measures the paper's flat-minima hypothesis on a fixed, seeded subset of an ImageFolder split (the eval
preprocessing `vitreduce eval` uses: what the model file records, else its run's augment settings, else
the recipe's defaults, or --crop-pct/--interpolation/--mean/--std; no augmentation; the model in eval
mode), so a result is reproducible. The loss is the cross-entropy averaged over --batches batches of
--batch-size images. Derivatives are with respect to the unique parameters: a shared MLP is one set of
variables.

  top eigenvalues  the --top-k largest, from Hessian-vector products (double backward) by power
                   iteration with deflation, or by Lanczos (--method lanczos: far fewer products,
                   above all for k > 1, but one model-sized vector of memory per iteration). Each is
                   converged when its residual ||H y - theta y|| is at most --tol * |theta| within
                   --iters iterations: an eigenvalue lies within --tol relative of the estimate
  trace            Hutchinson's estimator over --trace-samples Rademacher vectors, +- standard error;
                   also per unique parameter (tr(H) / P), the figure to compare models of different size
  SAM sharpness    loss(w + rho g/||g||) - loss(w) (Foret et al. 2021): ONE ascent step over the whole
                   fixed subset's mean loss, g its gradient (not m-sharpness, which is not implemented)
  ASAM sharpness   with --adaptive: loss(w + rho_a T^2 g/||T g||) - loss(w) (Kwon et al. 2021), rho_a =
                   --asam-rho, T = |w| + --eta on tensors named *weight* (linear, patch-embedding, head,
                   LayerNorm weights), T = 1 on biases, pos_embed and cls_token, as the authors' code
                   (SamsungLabs/ASAM) does; (nearly) unchanged by rescalings of weight tensors that keep
                   the function, so a sharpness to compare across models, with the trace per parameter
                   (top eigenvalue, trace and SAM are not; none is a verdict: docs/metrics.md)

CHECKPOINT is a model .safetensors written by vitreduce, or a run directory, whose model.safetensors
(or model_ema.safetensors with --ema) is used, as `vitreduce eval` does.

Examples:
  vitreduce sharpness runs/grouped --data data/synth --ema
  vitreduce sharpness runs/grouped/model.safetensors --data data/synth
  vitreduce sharpness model.safetensors --data data/imagenet --batches 10 --batch-size 64 --top-k 3 --json
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

from vitreduce.cli.args import (
    add_data_options,
    add_device_option,
    add_preprocessing_options,
    add_threads_option,
    preprocessing_overrides,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vitreduce.sharpness.options import METHODS, SharpnessOptions

    default = SharpnessOptions()  # each option's flag is its field name: --top-k is top_k
    parser.add_argument("checkpoint", type=Path, help="model .safetensors written by vitreduce, or a run directory")
    parser.add_argument("--ema", action="store_true", help="with a run directory: analyse model_ema.safetensors")
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
    parser.add_argument("--rho", type=float, default=default.rho,
                        help=f"SAM radius (default {default.rho:g}, Foret et al.'s): one ascent step over the "
                             "whole subset's mean loss, not m-sharpness")
    parser.add_argument("--adaptive", action="store_true",
                        help="also report ASAM (adaptive, scale-invariant) sharpness, Kwon et al. 2021")
    parser.add_argument("--asam-rho", type=float, default=default.asam_rho,
                        help=f"ASAM radius in the scaled coordinates (default {default.asam_rho:g}, the reference's)")
    parser.add_argument("--eta", type=float, default=default.eta,
                        help=f"ASAM: T = |w| + eta on weight tensors, 1 on biases, pos_embed, cls_token "
                             f"(default {default.eta:g}, the reference's)")
    parser.add_argument("--seed", type=int, default=default.seed,
                        help=f"seed of the data subset and random vectors (default {default.seed})")
    add_preprocessing_options(parser)
    add_device_option(parser)
    add_threads_option(parser)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    parser.add_argument("--quiet", action="store_true", help="print the result only: no header, no progress lines")


def run(args: argparse.Namespace) -> int:
    from vitreduce.data.recorded import recorded_classes
    from vitreduce.data.transforms import eval_preprocessing_for
    from vitreduce.device import resolve_device
    from vitreduce.reduction.checkpoint import load, read_metadata
    from vitreduce.sharpness.batches import load_batches
    from vitreduce.sharpness.measures import analyze_sharpness
    from vitreduce.sharpness.options import SharpnessOptions
    from vitreduce.sharpness.progress import ConsoleProgress
    from vitreduce.train.evaluate import resolve_model_file

    # Refuse impossible options before loading anything.
    options = SharpnessOptions.checked(**{name: getattr(args, name) for name in SharpnessOptions.model_fields})
    device = resolve_device(args.device, "--device")
    model_file = resolve_model_file(args.checkpoint, args.ema)  # a run directory's model file, as eval reads it
    header = read_metadata(model_file)
    # What the file records (else its run's), as `vitreduce eval` uses it; the command line's on top.
    preprocessing = eval_preprocessing_for(model_file, header, preprocessing_overrides(args))
    model = load(model_file, device=device, finite=True)
    fused = sum(bool(getattr(module, "fused_attn", False)) for module in model.modules())
    batches = load_batches(model, args.data, augment=preprocessing.augment, **options.subset(), device=device,
                           classes=recorded_classes(header, str(model_file)), model_file=str(model_file),
                           follow_links=args.follow_links)
    # Text meant for a person goes to stderr under --json, so stdout stays one JSON object; --quiet: nowhere.
    info = io.StringIO() if args.quiet else sys.stderr if args.json else sys.stdout
    print(f"{model_file}: {args.batches} batches x {args.batch_size} images of {args.data}/{args.split} "
          f"(seed {args.seed}), eval mode, on {device}", file=info)
    print(f"preprocessing: {preprocessing.describe()}", file=info)
    print(f"fused attention disabled for double-backward in {fused} attention modules (timm's fused SDPA has "
          "no double backward on CPU)", file=info)
    progress = ConsoleProgress(options.planned_products(), "HVP", quiet=args.quiet)
    try:
        result = analyze_sharpness(model, batches, options, progress=progress)
    finally:
        progress.close()
    if args.json:
        print(json.dumps({"checkpoint": str(model_file), "split": args.split,
                          "preprocessing": preprocessing.record(), **result.to_dict()}))
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
        lines.append(f"trace / param    {result.trace_per_parameter:.6g}  (per unique parameter: compare models)")
    lines.append(f"SAM sharpness    {result.sam_sharpness:.6g}  (rho {result.rho:g})")
    if result.asam_sharpness is not None:
        lines.append(f"ASAM sharpness   {result.asam_sharpness:.6g}  (rho {result.asam_rho:g}, T = |w| + "
                     f"{result.eta:g} on {result.asam_scaled_parameters:,} weight parameters, 1 on the rest)")
    lines.append(f"time             {result.seconds:.1f} s")
    return "\n".join(lines)
