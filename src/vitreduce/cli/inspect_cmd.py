"""Architecture table of a model under one or more reductions (params, MLPs, MACs), side by side.

MODEL is a timm model name, a vitreduce checkpoint, or a run directory (its model.safetensors). Models
are built on the meta device, so even ViT-H takes seconds and no memory. Ratios are against the first
reduction listed.

Examples:
  vitreduce inspect vit_base_patch16_224 --reduction none --reduction grouped --reduction shallow
  vitreduce inspect RUN_DIR --json          (RUN_DIR: a run directory, e.g. runs/grouped)
  vitreduce inspect RUN_DIR/model.safetensors --reduction none --reduction grouped
  vitreduce inspect swin_tiny_patch4_window7_224 --breakdown   (MACs per op category)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vitreduce.cli.args import add_model_arg_option, add_threads_option, parse_model_args
from vitreduce.errors import VitreduceError
from vitreduce.numbers import format_macs, macs_unit
from vitreduce.reduction.accounting import CATEGORIES, ModelDescription, describe
from vitreduce.reduction.checkpoint import build_from_metadata, read_checked_metadata
from vitreduce.reduction.models import create_model
from vitreduce.reduction.spec import ReductionSpec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="timm model name (e.g. vit_base_patch16_224), a vitreduce .safetensors file "
                                      "or a run directory")
    parser.add_argument(
        "--reduction", action="append", metavar="SPEC",
        help="reduction spec, repeatable (default: the checkpoint's own, or none, grouped, shallow for a name)",
    )
    parser.add_argument("--img-size", type=int, help="input size for the MAC count (default: the model's)")
    add_model_arg_option(parser)
    parser.add_argument("--breakdown", action="store_true",
                        help="also print the MACs per op category (patch embedding, attention projections and "
                             "matmuls, MLP, patch merging, head), which sum to the totals")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list, one object per reduction (with macs_breakdown: exact MACs per "
                             "op category)")
    add_threads_option(parser)


def run(args: argparse.Namespace) -> int:
    descriptions = describe_variants(args.model, args.reduction, args.img_size, parse_model_args(args.model_arg))
    if args.json:
        # The run.json record without embed_dim, which the architecture table does not show either.
        rows = [{**{k: v for k, v in d.record().items() if k != "embed_dim"}, "macs_breakdown": d.macs_breakdown}
                for d in descriptions]
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(descriptions))
        if args.breakdown:
            print()
            print(format_breakdown(descriptions))
    return 0


def describe_variants(model: str, reductions: list[str] | None, img_size: int | None,
                      model_args: dict | None = None) -> list[ModelDescription]:
    """Describe the model (name or checkpoint) under each reduction, building on the meta device."""
    specs = [ReductionSpec.parse(r) for r in reductions or []]  # refuse a bad spec before building
    if img_size is not None and img_size < 1:
        raise VitreduceError(f"--img-size must be a positive number of pixels, got {img_size}; leave it out for the "
                             "model's own")
    extra = {**(model_args or {}), **({"img_size": img_size} if img_size else {})}
    path = Path(model)
    if path.is_dir():
        from vitreduce.train.evaluate import resolve_model_file

        model = str(resolve_model_file(path, ema=False))  # a run directory: its model.safetensors, as eval reads it
    elif "/" in model and ":" not in model and not path.exists():  # a path, not a name (a hub id has a ':')
        raise VitreduceError(f"{model} does not exist; MODEL is a timm model name (e.g. vit_base_patch16_224), "
                             "a vitreduce .safetensors file or a run directory")
    if model.endswith(".safetensors") or Path(model).is_file():
        metadata = read_checked_metadata(model)  # its header checked against its tensors, as eval checks it
        specs = specs or [ReductionSpec.parse(metadata["reduction"])]
        # The header's own reduction (or another one) over the header's architecture, --model-arg on top.
        return [describe(build_from_metadata({**metadata, "reduction": str(spec)}, model, device="meta", **extra))
                for spec in specs]
    specs = specs or [ReductionSpec.parse(s) for s in ("none", "grouped", "shallow")]
    return [describe(create_model(model, reduction=spec, device="meta", **extra)) for spec in specs]


def format_table(descriptions: list[ModelDescription]) -> str:
    """The paper's architecture table, with ratios against the first row."""
    first = descriptions[0]
    divisor, unit = macs_unit(d.macs_total for d in descriptions)
    header = ["reduction", "params", "MLP params", "unique MLPs", "MLP hidden", "expansion",
              f"{unit} linear", f"{unit} +attn", "params ratio", "MACs ratio"]
    rows = [header]
    for d in descriptions:
        rows.append([
            d.reduction, f"{d.params:,}", f"{d.mlp_params:,}", str(d.unique_mlps), _hidden(d.mlp_hidden),
            f"{d.expansion:g}", format_macs(d.macs_linear, divisor), format_macs(d.macs_total, divisor),
            f"{d.params / first.params:.3f}", f"{d.macs_linear / first.macs_linear:.3f}",
        ])
    return f"model: {first.model}\n" + _render(rows)


def _render(rows: list[list[str]]) -> str:
    """Rows of cells as text: the first column left-aligned, the others right-aligned, a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)])
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


ZERO_MACS = ("relative position bias (a table lookup added to the logits), rotary embeddings (elementwise), "
             "shifted-window masks, norms, softmax, activations")


def format_breakdown(descriptions: list[ModelDescription]) -> str:
    """MACs per op category (rows) and reduction (columns); categories that are 0 everywhere left out."""
    used = [c for c in CATEGORIES if any(d.macs_breakdown.get(c) for d in descriptions)]
    divisor, unit = macs_unit(d.macs_total for d in descriptions)
    rows = [[unit, *(d.reduction for d in descriptions)]]
    rows += [[c, *(format_macs(d.macs_breakdown.get(c, 0), divisor, 4) for d in descriptions)] for c in used]
    rows.append(["total linear", *(format_macs(d.macs_linear, divisor, 4) for d in descriptions)])
    rows.append(["total +attn", *(format_macs(d.macs_total, divisor, 4) for d in descriptions)])
    return _render(rows) + (f"\nattention_matmul (QK^T and AV, per window for Swin) is in +attn only. "
                            f"0 MACs: {ZERO_MACS}.")


def _hidden(hidden: int | list[int]) -> str:
    return str(hidden) if isinstance(hidden, int) else "/".join(map(str, hidden))
