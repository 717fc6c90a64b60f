"""Make datasets: `vitreduce data synth OUT` writes the built-in synthetic image-classification dataset,
`vitreduce data shard IMAGEFOLDER OUT` converts an image folder into tar shards, `vitreduce data index
ROOT` indexes existing WebDataset shards so that training can read them.

The synthetic dataset is an ImageFolder tree (OUT/train/<class>/*.png, OUT/val/<class>/*.png) of
shape and texture families with random colours, positions and noise; the same seed gives
byte-identical files. It needs no download and is made in seconds. With --segmentation it writes
scenes of textured objects with their exact masks in the ADE20K layout instead (for `vitreduce probe
segmentation`).
"""
from __future__ import annotations

import argparse
import tempfile
import textwrap
import time
from pathlib import Path

from vitreduce.cli.args import add_threads_option
from vitreduce.config_tree import SEED_MAX, kwargs_from
from vitreduce.data import segmentation_synth as seg
from vitreduce.data import shard_writer, synth
from vitreduce.data.segmentation_synth import segmentation_class_names
from vitreduce.errors import VitreduceError

_SYNTH_HELP = """Write the built-in synthetic dataset as OUT/train/<class>/*.png and OUT/val/<class>/*.png.

{classes}
Shapes have random positions, sizes, rotations and colours (the same colour distribution for every
class), plus noise and line distractors. The same --seed gives byte-identical files. OUT is built
in a temporary directory beside it and renamed into place when complete.

With --segmentation: scenes of 1 to 3 textured objects (the class is the texture: {textures}) on a
plain background (class 0), with exact masks, as OUT/images/{{training,validation}}/NNNNN.png and
OUT/annotations/{{training,validation}}/NNNNN.png (the ADE20K layout); --classes counts the background
(default {seg_classes}), --train-images and --val-images set the split sizes.
"""


def _class_list() -> str:
    names = ", ".join(synth.class_names(len(synth.FAMILIES)))
    return textwrap.fill(f"Classes (the first --classes of them): {names}.", width=100)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="data_verb", required=True, metavar="VERB")
    sub = verbs.add_parser(
        "synth",
        help="write the built-in synthetic dataset (ImageFolder layout)",
        description=_SYNTH_HELP.format(classes=_class_list(), textures=", ".join(segmentation_class_names(7)[1:]),
                                       seg_classes=seg.CLASSES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.add_argument("out", metavar="OUT", help="directory to create (absent or empty)")
    sub.add_argument("--seed", type=int, default=0,
                     help=f"0 to {SEED_MAX}; same seed, same files (default: %(default)s)")
    sub.add_argument(
        "--classes", type=int, default=None,
        help=f"number of classes, 2 to {len(synth.FAMILIES)} (default: {synth.CLASSES}; with --segmentation "
             f"2 to 7, default {seg.CLASSES})",
    )
    per_class = f"1 to {synth.MAX_PER_CLASS} (default: %(default)s)"
    sub.add_argument("--train-per-class", type=int, default=synth.TRAIN_PER_CLASS, help=per_class)
    sub.add_argument("--val-per-class", type=int, default=synth.VAL_PER_CLASS, help=per_class)
    sub.add_argument("--size", type=int, default=synth.SIZE,
                     help=f"image side in pixels, 8 to {synth.MAX_SIZE} (default: %(default)s)")
    sub.add_argument("--segmentation", action="store_true",
                     help="write the segmentation scenes in the ADE20K layout instead (see above)")
    sub.add_argument("--train-images", type=int, default=seg.TRAIN_IMAGES,
                     help=f"with --segmentation: training scenes, 1 to {seg.MAX_IMAGES} (default: %(default)s)")
    sub.add_argument("--val-images", type=int, default=seg.VAL_IMAGES,
                     help="with --segmentation: validation scenes (default: %(default)s)")
    sub.add_argument(
        "--overwrite", action="store_true",
        help=f"replace a dataset this command wrote before (OUT has {synth.MARKER}); other files stay",
    )
    sub.add_argument("--shards", action="store_true",
                     help="write it as a tar shard set (as `vitreduce data shard` would convert it) instead")
    add_threads_option(sub)
    _add_shard_verbs(verbs)


def _add_shard_verbs(verbs) -> None:
    shard = verbs.add_parser(
        "shard", help="convert an ImageFolder tree into tar shards (WebDataset layout) with an index",
        description="Write IMAGEFOLDER's splits as OUT/<split>-NNNNNN.tar, one index per split and "
                    "vitreduce_shards.json, in the folder's order: training from OUT reads the same batches as "
                    "from IMAGEFOLDER. The same images give the same bytes.")
    shard.add_argument("source", metavar="IMAGEFOLDER", help="ImageFolder root holding the split folders")
    shard.add_argument("out", metavar="OUT", help="folder to create (absent or empty)")
    shard.add_argument("--shard-size", type=int, default=shard_writer.SHARD_SIZE,
                       help="samples per shard (default: %(default)s)")
    shard.add_argument("--splits", default="train,val", help="split folders to convert (default: %(default)s)")
    index = verbs.add_parser(
        "index", help="index existing WebDataset tar shards (image + .cls per sample) for training",
        description="Write ROOT/<split>-index.tsv and ROOT/vitreduce_shards.json for the tar shards in ROOT, so "
                    "that data.root: ROOT reads them. Shards of a split are taken in sorted name order.")
    index.add_argument("root", metavar="ROOT", help="folder holding the .tar shards")
    index.add_argument("--split", action="append", required=True, metavar="NAME=GLOB",
                       help="a split and its shards, e.g. train='imagenet1k-train-*.tar' (repeat per split)")
    index.add_argument("--classes", required=True, metavar="FILE",
                       help="text file of class names, one a line: line i names class index i (.cls value i)")


def run(args: argparse.Namespace) -> int:
    # argparse has already refused any other verb; the writers check every flag before writing anything.
    return {"synth": _synth, "shard": _shard, "index": _index}[args.data_verb](args)


def _synth(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if args.segmentation:
        return _segmentation(args, start)
    args.classes = synth.CLASSES if args.classes is None else args.classes
    options = kwargs_from(args, "seed", "classes", "train_per_class", "val_per_class", "size", "overwrite")
    out = _synth_shards(args.out, options) if args.shards else synth.write_synth_dataset(args.out, **options)
    n_train, n_val = args.classes * args.train_per_class, args.classes * args.val_per_class
    print(
        f"wrote {n_train} train + {n_val} val images ({args.classes} classes, {args.size}x{args.size} px, "
        f"seed {args.seed}) to {out} in {time.perf_counter() - start:.1f} s"
    )
    return 0


def _segmentation(args: argparse.Namespace, start: float) -> int:
    if args.overwrite:
        raise VitreduceError("--overwrite does not apply with --segmentation: write to a new directory")
    if args.shards:  # the probe reads the ADE20K folder layout only
        raise VitreduceError("--shards does not apply with --segmentation (scenes are written in the ADE20K "
                             "folder layout): drop --shards")
    classes = seg.CLASSES if args.classes is None else args.classes
    out = seg.write_segmentation_dataset(args.out, seed=args.seed, classes=classes, train_images=args.train_images,
                                         val_images=args.val_images, size=args.size)
    print(f"wrote {args.train_images} training + {args.val_images} validation scenes with masks ({classes} classes "
          f"incl. background, {args.size}x{args.size} px, seed {args.seed}) to {out} in "
          f"{time.perf_counter() - start:.1f} s")
    return 0


def _synth_shards(out: str, options: dict):
    if options.pop("overwrite"):
        raise VitreduceError("--overwrite replaces image folders only; with --shards choose a new OUT")
    with tempfile.TemporaryDirectory(dir=Path(out).expanduser().parent) as tmp:
        folder = synth.write_synth_dataset(Path(tmp) / "synth", **options)
        return shard_writer.write_shards(folder, out, progress=lambda line: None)


def _shard(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    splits = tuple(name.strip() for name in args.splits.split(",") if name.strip())
    out = shard_writer.write_shards(args.source, args.out, splits=splits, shard_size=args.shard_size,
                       progress=lambda line: print(line, flush=True))
    print(f"wrote the shard set {out} ({', '.join(splits)}) in {time.perf_counter() - start:.1f} s")
    return 0


def _index(args: argparse.Namespace) -> int:
    root = Path(args.root).expanduser()
    layout = {}
    for item in args.split:
        name, equals, pattern = item.partition("=")
        shards = sorted(path.name for path in root.glob(pattern)) if equals and name else []
        if not shards:
            raise VitreduceError(f"--split {item!r}: give NAME=GLOB matching .tar files in {root}")
        layout[name] = shards
    try:
        classes = [line.strip() for line in Path(args.classes).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise VitreduceError(f"--classes {args.classes} cannot be read ({err})") from None
    if len(set(classes)) != len(classes) or not classes:
        raise VitreduceError(f"--classes {args.classes}: give each class name once, one a line")
    shard_writer.index_shard_set(root, layout, classes, tool="vitreduce data index",
                                 progress=lambda line: print(line, flush=True))
    print(f"indexed {root}: data.root: {root} now reads these shards")
    return 0
