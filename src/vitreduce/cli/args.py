"""Command-line options that several verbs share, defined once so that they read and parse the same."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vitreduce.config_tree import parse_assignment
from vitreduce.reduction.architecture import check_kwargs


def add_model_arg_option(parser: argparse.ArgumentParser) -> None:
    """``--model-arg KEY=VALUE``: extra timm kwargs, for every command that builds a model."""
    parser.add_argument(
        "--model-arg", action="append", default=[], metavar="KEY=VALUE",
        help="architecture kwarg for timm.create_model, value parsed as YAML (e.g. depth=6, img_size=32); "
             "repeatable; never pretrained weights (use --weights)",
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
