"""Overhead of vitreduce's training step against a bare timm loop (same model, batch, precision, process).

The engine step adds a gradient norm over unique parameters, one finiteness check (a host sync),
loss weighting for accumulation and no-op scaler calls; with --ema both sides also update an EMA
(vitreduce's over unique tensors vs timm's ModelEmaV3). Blocks of steps alternate between the two
loops (which goes first alternates too); the figure is the ratio of median block times.

    python benchmarks/train_overhead.py                      # defaults below
    python benchmarks/train_overhead.py --reduction grouped --ema --precision bf16
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import torch
from torch import nn

import vitreduce
from vitreduce.device import autocast
from vitreduce.train.config import OptimizerConfig
from vitreduce.train.ema import Ema
from vitreduce.train.optim import create_optimizer
from vitreduce.train.step import StepContext, train_step


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_tiny_patch16_224")
    parser.add_argument("--reduction", default="none")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--ema", action="store_true", help="update an EMA every step on both sides")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=9, help="timed blocks per loop")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return parser.parse_args()


def build(args):
    torch.manual_seed(0)
    model = vitreduce.create_model(args.model, reduction=args.reduction, img_size=args.img_size,
                                   patch_size=args.patch_size, num_classes=100)
    return model, create_optimizer(model, OptimizerConfig())


def engine_loop(args, batch):
    model, optimizer = build(args)
    ctx = StepContext.build(model, model, loss_fn=nn.CrossEntropyLoss(), optimizer=optimizer,
                            scaler=torch.amp.GradScaler("cpu", enabled=False),
                            ema=Ema(model, 0.9998) if args.ema else None, precision=args.precision,
                            device=torch.device("cpu"))
    return lambda: train_step(ctx, [batch])


def bare_loop(args, batch):
    from timm.utils import ModelEmaV3

    model, optimizer = build(args)
    ema = ModelEmaV3(model, decay=0.9998) if args.ema else None
    loss_fn = nn.CrossEntropyLoss()
    images, targets = batch

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(args.precision, torch.device("cpu")):
            loss = loss_fn(model(images), targets)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(model)
        return loss.item()  # timm's train.py also reads the loss every step it logs; here every step

    return step


def timed(step, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - start


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(args.batch, 3, args.img_size, args.img_size, generator=g),
             torch.randint(0, 100, (args.batch,), generator=g))
    loops = {"engine": engine_loop(args, batch), "bare": bare_loop(args, batch)}
    for step in loops.values():  # warm-up (allocator, oneDNN primitives)
        timed(step, 2)
    times = {name: [] for name in loops}
    for repeat in range(args.repeats):
        order = list(loops) if repeat % 2 == 0 else list(loops)[::-1]
        for name in order:
            times[name].append(timed(loops[name], args.steps))
    medians = {name: statistics.median(t) for name, t in times.items()}
    rate = {name: args.steps * args.batch / m for name, m in medians.items()}
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), timm {__import__('timm').__version__}")
    print(f"date: {datetime.date.today().isoformat()}")
    print(f"setup: {args.model} reduction={args.reduction} img {args.img_size} patch {args.patch_size} "
          f"batch {args.batch} {args.precision} ema={args.ema}; {args.repeats} blocks x {args.steps} steps each")
    for name in loops:
        spread = f"{min(times[name]):.3f}-{max(times[name]):.3f}"
        print(f"{name:>6}: median block {medians[name]:.3f} s (range {spread}), {rate[name]:.1f} img/s")
    print(f"throughput ratio engine/bare: {rate['engine'] / rate['bare']:.3f}")


if __name__ == "__main__":
    main()
