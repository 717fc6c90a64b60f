"""Make datasets: `vitreduce data synth OUT` writes the built-in synthetic image-classification dataset.

The synthetic dataset is an ImageFolder tree (OUT/train/<class>/*.png, OUT/val/<class>/*.png) of
shape and texture families with random colours, positions and noise; the same seed gives
byte-identical files. It needs no download and is made in seconds.
"""
from __future__ import annotations

import argparse
import textwrap
import time

from vitreduce.cli.args import add_threads_option
from vitreduce.config_tree import SEED_MAX, kwargs_from
from vitreduce.data import synth

_SYNTH_HELP = """Write the built-in synthetic dataset as OUT/train/<class>/*.png and OUT/val/<class>/*.png.

{classes}
Shapes have random positions, sizes, rotations and colours (the same colour distribution for every
class), plus noise and line distractors. The same --seed gives byte-identical files. OUT is built
in a temporary directory beside it and renamed into place when complete.
"""


def _class_list() -> str:
    names = ", ".join(synth.class_names(len(synth.FAMILIES)))
    return textwrap.fill(f"Classes (the first --classes of them): {names}.", width=100)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="data_verb", required=True, metavar="VERB")
    sub = verbs.add_parser(
        "synth",
        help="write the built-in synthetic dataset (ImageFolder layout)",
        description=_SYNTH_HELP.format(classes=_class_list()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.add_argument("out", metavar="OUT", help="directory to create (absent or empty)")
    sub.add_argument("--seed", type=int, default=0,
                     help=f"0 to {SEED_MAX}; same seed, same files (default: %(default)s)")
    sub.add_argument(
        "--classes", type=int, default=synth.CLASSES,
        help=f"number of classes, 2 to {len(synth.FAMILIES)} (default: %(default)s)",
    )
    per_class = f"1 to {synth.MAX_PER_CLASS} (default: %(default)s)"
    sub.add_argument("--train-per-class", type=int, default=synth.TRAIN_PER_CLASS, help=per_class)
    sub.add_argument("--val-per-class", type=int, default=synth.VAL_PER_CLASS, help=per_class)
    sub.add_argument("--size", type=int, default=synth.SIZE,
                     help=f"image side in pixels, 8 to {synth.MAX_SIZE} (default: %(default)s)")
    sub.add_argument(
        "--overwrite", action="store_true",
        help=f"replace a dataset this command wrote before (OUT has {synth.MARKER}); other files stay",
    )
    add_threads_option(sub)


def run(args: argparse.Namespace) -> int:
    # Only one verb so far; argparse has already refused any other. write_synth_dataset checks every
    # flag against the bounds the config's synth: section uses (data.synth) before writing anything.
    start = time.perf_counter()
    out = synth.write_synth_dataset(
        args.out, **kwargs_from(args, "seed", "classes", "train_per_class", "val_per_class", "size", "overwrite")
    )
    n_train, n_val = args.classes * args.train_per_class, args.classes * args.val_per_class
    print(
        f"wrote {n_train} train + {n_val} val images ({args.classes} classes, {args.size}x{args.size} px, "
        f"seed {args.seed}) to {out} in {time.perf_counter() - start:.1f} s"
    )
    return 0
