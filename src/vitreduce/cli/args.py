"""Command-line options that several verbs share, defined once so that they read and parse the same."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vitreduce.config_tree import parse_assignment
from vitreduce.reduction.architecture import check_kwargs


def add_model_arg_option(parser: argparse.ArgumentParser, weights_option: bool = False) -> None:
    """``--model-arg KEY=VALUE``: extra timm kwargs, for every command that builds a model.

    Args:
        parser: the verb's parser.
        weights_option: the verb has ``--weights`` (its help then points there for trained weights).
    """
    where = " (use --weights)" if weights_option else ""
    parser.add_argument(
        "--model-arg", action="append", default=[], metavar="KEY=VALUE",
        help="architecture kwarg for timm.create_model, value parsed as YAML (e.g. depth=6, img_size=32); "
             f"repeatable; never pretrained weights{where}",
    )


def parse_model_args(items: list[str]) -> dict[str, Any]:
    """``["depth=6", "qkv_bias=false"]`` -> ``{"depth": 6, "qkv_bias": False}``, each checked against the
    allow-list of architecture kwargs (no pretrained weights, paths or unknown keys)."""
    kwargs = dict(parse_assignment(item, "--model-arg", "depth=6", form="KEY=VALUE") for item in items)
    return check_kwargs(kwargs, source="--model-arg")


def add_data_options(parser: argparse.ArgumentParser, split: str) -> None:
    """``--data ROOT`` (an ImageFolder root) and ``--split NAME`` (a folder under it)."""
    parser.add_argument("--data", type=Path, required=True, help="ImageFolder root holding the split folder")
    parser.add_argument("--split", default=split, help=f"split folder under --data (default: {split})")
    parser.add_argument("--follow-links", action="store_true",
                        help="read links to image files outside --data too (a subset made of links into another "
                             "dataset); default: such links are skipped, and a split of nothing else refused")


def add_preprocessing_options(parser: argparse.ArgumentParser) -> None:
    """``--crop-pct``, ``--interpolation``, ``--mean``, ``--std``: the eval preprocessing, instead of what the
    model file records (``vitreduce.data.transforms.eval_preprocessing_for``)."""
    use = " instead of the model file's (default: what the file records, else its run's, else the recipe's)"
    parser.add_argument("--crop-pct", type=float, default=None, metavar="F", help="eval centre-crop fraction" + use)
    parser.add_argument("--interpolation", default=None, metavar="NAME", help="eval resize interpolation" + use)
    parser.add_argument("--mean", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                        help="normalisation mean" + use)
    parser.add_argument("--std", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                        help="normalisation std" + use)


def preprocessing_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The eval settings given on the command line (``add_preprocessing_options``), None where not given."""
    return {"crop_pct": args.crop_pct, "interpolation": args.interpolation,
            "mean": tuple(args.mean) if args.mean else None, "std": tuple(args.std) if args.std else None}


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda``, resolved by vitreduce.device.resolve_device."""
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device (default auto)")


def add_threads_option(parser: argparse.ArgumentParser, per: str = "") -> None:
    """``--threads N``: torch's CPU threads, for every command that computes (set by ``cli.main``)."""
    parser.add_argument(
        "--threads", type=int, default=None, metavar="N",
        help=f"torch CPU threads{per} (default: OMP_NUM_THREADS if set, else the available cores not busy with "
             "other work, by the load average); a warning says when the machine is busier than that",
    )
