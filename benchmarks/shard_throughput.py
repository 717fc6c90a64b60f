"""Image folder against tar shards: loader-only throughput, the tiny training run, and ViT-B steps fed by each.

    .venv/bin/python benchmarks/shard_throughput.py --out /tmp/shard-bench              # defaults below
    .venv/bin/python benchmarks/shard_throughput.py --out /tmp/shard-bench --vit-b-steps 0   # skip ViT-B

1. Makes the built-in synthetic dataset at --size px (PNG files) and converts it with ``write_shards``
   (timed).
2. Loader only: one epoch of the training loader (the paper's augmentation recipe) and one pass of the eval
   loader, from the folder and from the shards, for workers 0..--max-workers; folder and shards alternate
   and each figure is the median of --repeats passes (img/s).
3. The tiny training config (tests' 2-block ViT on 16 px images, 3 epochs) trained with ``vitreduce.train``
   from a 16 px folder and from its shards, alternating, --repeats times each (median wall time).
4. ViT-B/16 at 224 px: --vit-b-steps training steps fed by the training loader (--max-workers workers)
   from each source; the time spent waiting for the next batch against the time of the step says whether
   the loader is the bottleneck.
Prints a Markdown report (also OUT/report.md) with the machine and date.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

import timm
import torch
import yaml

from vitreduce.data import AugmentConfig, DataConfig, build_eval_loader, build_train_loader, write_shards
from vitreduce.data.synth import write_synth_dataset


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="working folder (datasets, runs, report.md)")
    parser.add_argument("--size", type=int, default=224, help="image side of the loader dataset")
    parser.add_argument("--per-class", type=int, default=32, help="training images per class (10 classes)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vit-b-steps", type=int, default=3, help="0 skips the ViT-B part")
    parser.add_argument("--vit-b-batch", type=int, default=16)
    return parser.parse_args()


def make_sources(out: Path, size: int, per_class: int) -> tuple[dict[str, Path], float]:
    folder = out / f"synth-{size}"
    if not folder.exists():
        write_synth_dataset(folder, size=size, train_per_class=per_class, val_per_class=max(1, per_class // 4))
    shards = out / f"shards-{size}"
    shutil.rmtree(shards, ignore_errors=True)
    start = time.perf_counter()
    write_shards(folder, shards, progress=lambda line: None)
    return {"folder": folder, "shards": shards}, time.perf_counter() - start


def loader_rates(sources: dict[str, Path], args) -> list[tuple[str, int, str, float]]:
    """(loader, workers, source, median img/s)."""
    rows = []
    for workers in range(args.max_workers + 1):
        for kind in ("train", "eval"):
            seconds = {name: [] for name in sources}
            for _ in range(args.repeats):
                for name, root in sources.items():
                    seconds[name].append(_one_pass(kind, root, workers, args))
            for name, times in seconds.items():
                rows.append((kind, workers, name, statistics.median(times)))
    return rows


def _one_pass(kind: str, root: Path, workers: int, args) -> float:
    """img/s of one epoch (train: the paper's augmentation) or one eval pass."""
    data = DataConfig(root=str(root), batch_size=args.batch, workers=workers, pin_memory=False)
    if kind == "train":
        loader = build_train_loader(data, AugmentConfig(), args.size, 10, seed=0)
    else:
        loader = build_eval_loader(data, AugmentConfig(), args.size)
    start, count = time.perf_counter(), 0
    for batch in loader:
        count += len(batch[1])
    return count / (time.perf_counter() - start)


def tiny_runs(out: Path, repeats: int) -> dict[str, float]:
    """Median wall seconds of the tiny training run from a 16 px folder and from its shards."""
    from vitreduce.train import load_config, train

    folder = out / "synth-16"
    if not folder.exists():
        write_synth_dataset(folder, classes=4, train_per_class=8, val_per_class=4, size=16)
    if not (out / "shards-16").exists():
        write_shards(folder, out / "shards-16", shard_size=10, progress=lambda line: None)
    times = {"folder": [], "shards": []}
    for repeat in range(repeats):
        for name, root in (("folder", folder), ("shards", out / "shards-16")):
            tree = _tiny_config(root)
            (out / "tiny.yaml").write_text(yaml.safe_dump(tree))
            shutil.rmtree(out / f"tiny-{name}-{repeat}", ignore_errors=True)
            start = time.perf_counter()
            train(load_config(out / "tiny.yaml"), out / f"tiny-{name}-{repeat}")
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _tiny_config(root: Path) -> dict:
    return {
        "seed": 3, "epochs": 3, "device": "cpu", "precision": "fp32",
        "model": {"name": "vit_tiny_patch16_224", "reduction": "grouped", "num_classes": 4, "img_size": 16,
                  "patch_size": 4, "embed_dim": 16, "depth": 2, "num_heads": 2, "drop_path_rate": 0.1},
        "data": {"root": str(root), "batch_size": 8, "workers": 2},
        "augment": {"repeated_aug": 1},
        "optimizer": {"lr": 1e-3}, "schedule": {"warmup_epochs": 1}, "ema": {"decay": 0.9},
        "logging": {"progress": "none"},
    }


def vit_b_steps(sources: dict[str, Path], args) -> dict[str, tuple[float, float]]:
    """Per source: (median seconds waiting for a batch, median seconds of a training step) of ViT-B/16."""
    result = {}
    for name, root in sources.items():
        torch.manual_seed(0)
        model = timm.create_model("vit_base_patch16_224", num_classes=10)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        data = DataConfig(root=str(root), batch_size=args.vit_b_batch, workers=args.max_workers, pin_memory=False)
        loader = build_train_loader(data, AugmentConfig(), 224, 10, seed=0)
        waits, steps = [], []
        iterator, last = iter(loader), time.perf_counter()
        for _ in range(args.vit_b_steps):
            batch = next(iterator)
            waits.append(time.perf_counter() - last)
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(batch.images), batch.targets).backward()
            optimizer.step()
            last = time.perf_counter()
            steps.append(last - start)
        del iterator
        result[name] = (statistics.median(waits[1:] or waits), statistics.median(steps))
    return result


def report(args, shard_seconds, rates, tiny, vit_b) -> str:
    load, cpu = os.getloadavg(), _cpu_name()
    lines = [
        f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {cpu}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, Python {platform.python_version()}, "
        f"torch {torch.__version__}, timm {timm.__version__}; load average {load[0]:.1f} at the end.",
        f"Dataset: synthetic, 10 classes x {args.per_class} train images, {args.size} px PNG; batch {args.batch}; "
        f"median of {args.repeats} alternating passes. Conversion to shards: {shard_seconds:.1f} s.", "",
        "| loader | workers | folder img/s | shards img/s | shards / folder |", "|---|---:|---:|---:|---:|",
    ]
    table = {(kind, workers, name): rate for kind, workers, name, rate in rates}
    for kind, workers in sorted({(k, w) for k, w, _, _ in rates}, key=lambda kw: (kw[0] != "train", kw[1])):
        folder, shards = table[(kind, workers, "folder")], table[(kind, workers, "shards")]
        lines.append(f"| {kind} | {workers} | {folder:.1f} | {shards:.1f} | {shards / folder:.2f} |")
    if tiny:
        lines += ["", f"Tiny training config (3 epochs, 2 workers): folder {tiny['folder']:.1f} s, shards "
                      f"{tiny['shards']:.1f} s, shards / folder time {tiny['shards'] / tiny['folder']:.2f}."]
    for name, (wait, step) in vit_b.items():
        lines.append(f"ViT-B/16 from {name}: step {step:.2f} s (batch {args.vit_b_batch}), waiting for the "
                     f"next batch {wait:.3f} s ({100 * wait / (wait + step):.1f}% of the time).")
    return "\n".join(lines) + "\n"


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    args = parse()
    args.out.mkdir(parents=True, exist_ok=True)
    sources, shard_seconds = make_sources(args.out, args.size, args.per_class)
    rates = loader_rates(sources, args)
    tiny = tiny_runs(args.out, args.repeats)
    vit_b = vit_b_steps(sources, args) if args.vit_b_steps else {}
    text = report(args, shard_seconds, rates, tiny, vit_b)
    (args.out / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
