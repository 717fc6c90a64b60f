"""Cost of one Hessian-vector product relative to one training step, on the same batch, per reduction.

A training step is forward + cross-entropy + backward + AdamW step in train mode, timed twice: with
fused attention as timm builds it ("train"), and with the plain attention path ("train, unfused").
An HVP is vitreduce.sharpness.hessian.hessian_vector_product over the unique parameters (eval mode, fused
attention off: double backward needs the plain path), so "HVP / train" is what an analysis costs
against real training and "HVP / unfused" isolates the double backward. Times are medians of
interleaved repeats (train, unfused, HVP, train, ...) after one warm-up each, so drifting machine load
hits all alike. Memory is measured in a fresh subprocess per (reduction, operation): the peak resident
set during one operation (after a warm-up one) minus the resident set just before it.

  .venv/bin/python benchmarks/hvp_cost.py                       # vit_tiny, 224 px, batch 16
  .venv/bin/python benchmarks/hvp_cost.py --model vit_small_patch16_224 --repeats 3
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import vitreduce
from vitreduce.reduction.params import unique_parameters
from vitreduce.sharpness.hessian import hessian_vector_product
from vitreduce.sharpness.measures import analysis_mode, batch_losses

REDUCTIONS = ("none", "grouped", "shallow:ratio=0.5")
OPERATIONS = ("train", "unfused", "hvp")


def build(model_name: str, reduction: str, img_size: int, batch_size: int, seed: int = 0):
    torch.manual_seed(seed)
    model = vitreduce.create_model(model_name, reduction=reduction, img_size=img_size, num_classes=1000)
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, img_size, img_size, generator=generator)  # (B, C, H, W)
    targets = torch.randint(0, 1000, (batch_size,), generator=generator)
    return model, (images, targets)


class Operations:
    """The two timed operations on one model and batch."""

    def __init__(self, model, batch):
        self.model, self.batch = model, batch
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)  # model.parameters(): unique tensors
        self.params = list(unique_parameters(model, trainable_only=True))
        generator = torch.Generator().manual_seed(1)
        self.vector = [torch.randn(p.shape, generator=generator) for p in self.params]

    def train_step(self) -> None:
        self.model.train()
        images, targets = self.batch
        loss = F.cross_entropy(self.model(images), targets)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def train_step_unfused(self) -> None:
        attention = [m for m in self.model.modules() if getattr(m, "fused_attn", False)]
        for module in attention:
            module.fused_attn = False
        try:
            self.train_step()
        finally:
            for module in attention:
                module.fused_attn = True

    def hvp(self) -> None:
        with analysis_mode(self.model):
            hessian_vector_product(batch_losses(self.model, [self.batch]), self.params, self.vector)

    def run(self, name: str) -> None:
        {"train": self.train_step, "unfused": self.train_step_unfused, "hvp": self.hvp}[name]()


def time_reduction(args, reduction: str) -> dict:
    model, batch = build(args.model, reduction, args.img_size, args.batch_size)
    ops = Operations(model, batch)
    timings = {name: [] for name in OPERATIONS}
    for name in OPERATIONS:  # warm-up: allocator, AdamW state
        ops.run(name)
    for _ in range(args.repeats):
        for name in OPERATIONS:
            start = time.perf_counter()
            ops.run(name)
            timings[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(times) for name, times in timings.items()}
    return {"reduction": reduction, "params": sum(p.numel() for p in ops.params), "seconds": medians,
            "ratios": [h / t for h, t in zip(timings["hvp"], timings["train"], strict=True)]}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _trim() -> None:
    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        ctypes.CDLL(name).malloc_trim(0)  # hand freed heap back, so the baseline is the live set


def child(args) -> None:
    """In a fresh process: peak extra resident memory (MiB) of one operation after a warm-up one."""
    torch.set_num_threads(args.threads)
    model, batch = build(args.model, args.child_reduction, args.img_size, args.batch_size)
    ops = Operations(model, batch)
    ops.run(args.child_op)
    _trim()
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak (VmHWM) to the current resident set
    ops.run(args.child_op)
    peak = _status_kib("VmHWM")
    print(json.dumps({"extra_mib": (peak - before) / 1024, "peak_mib": peak / 1024}))


def measure_memory(args, reduction: str, op: str) -> dict:
    command = [sys.executable, __file__, "--model", args.model, "--img-size", str(args.img_size),
               "--batch-size", str(args.batch_size), "--threads", str(args.threads),
               "--child-reduction", reduction, "--child-op", op]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, timm {_timm_version()}, "
            f"{torch.get_num_threads()} torch thread(s), load average {load} at start")


def _timm_version() -> str:
    import timm

    return timm.__version__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_tiny_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: steadiest on a shared machine)")
    parser.add_argument("--reductions", nargs="+", default=list(REDUCTIONS))
    parser.add_argument("--no-memory", action="store_true", help="skip the per-operation memory subprocesses")
    parser.add_argument("--child-reduction", help=argparse.SUPPRESS)
    parser.add_argument("--child-op", choices=OPERATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_op:
        child(args)
        return
    torch.set_num_threads(args.threads)
    print(f"# hvp_cost.py {datetime.date.today().isoformat()}: {args.model}, {args.img_size} px, batch "
          f"{args.batch_size}, {args.repeats} interleaved repeats (median), CPU")
    print(f"# machine: {machine()}")
    print(f"# command: {' '.join([os.path.relpath(sys.executable), *sys.argv])}")
    header = ("| reduction | unique params | train (s) | train, unfused (s) | HVP (s) | HVP / train (range) "
              "| HVP / unfused |")
    rule = "|---|---:|---:|---:|---:|---|---:|"
    if not args.no_memory:
        header += " extra MiB: train / unfused / HVP | HVP / train memory |"
        rule += "---|---:|"
    print(header)
    print(rule)
    for reduction in args.reductions:
        row = time_reduction(args, reduction)
        seconds = row["seconds"]
        line = (f"| {reduction} | {row['params']:,} | {seconds['train']:.3f} | {seconds['unfused']:.3f} | "
                f"{seconds['hvp']:.3f} | {seconds['hvp'] / seconds['train']:.2f}x "
                f"({min(row['ratios']):.2f}-{max(row['ratios']):.2f}) | {seconds['hvp'] / seconds['unfused']:.2f}x |")
        if not args.no_memory:
            extra = {name: measure_memory(args, reduction, name)["extra_mib"] for name in OPERATIONS}
            line += (f" {extra['train']:.0f} / {extra['unfused']:.0f} / {extra['hvp']:.0f} | "
                     f"{extra['hvp'] / extra['train']:.2f}x |")
        print(line, flush=True)


if __name__ == "__main__":
    main()
