"""Efficiency of the paper's variants on this machine: throughput ratios and training-memory savings.

Profiles none / grouped / shallow of ViT-B/16 and ViT-S/16 with `vitreduce.efficiency.profiler.profile_variants`
(variants interleaved in one process, peak memory in a fresh process per variant) in each precision,
prints the full tables, and rewrites the section "## Efficiency (profile_variants.py)" of
benchmarks/README.md with the measured ratios, the machine, the date and the exact command.

    .venv/bin/python benchmarks/profile_variants.py                     # the README's figures
    .venv/bin/python benchmarks/profile_variants.py --models vit_small_patch16_224 --no-readme
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import timm
import torch

from vitreduce.efficiency.profiler import profile_variants
from vitreduce.efficiency.results import VariantProfile, device_name, format_table
from vitreduce.files import write_json, write_text

HEADING = "## Efficiency (profile_variants.py)"
README = Path(__file__).resolve().parent / "README.md"
VARIANTS = ["none", "grouped", "shallow"]
SHORT = {"vit_base_patch16_224": "ViT-B/16", "vit_small_patch16_224": "ViT-S/16"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_base_patch16_224", "vit_small_patch16_224"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--readme", type=Path, default=README, help="README to update (default: benchmarks/README.md)")
    parser.add_argument("--no-readme", action="store_true", help="print only; leave the README alone")
    parser.add_argument("--json-out", type=Path, default=None, help="also write every variant's figures here")
    return parser.parse_args(argv)


def machine(device: str) -> str:
    """One line: processor, cores, threads, RAM, the bf16 instructions the CPU has, software versions."""
    flags = set()
    mem_total = None
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        flags = set(next((ln.split(":", 1)[1].split() for ln in cpuinfo.splitlines() if ln.startswith("flags")), []))
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        mem_total = int(next(ln.split()[1] for ln in meminfo if ln.startswith("MemTotal"))) * 1024 / 1e9
    except (OSError, StopIteration):
        pass
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags] or ["none"]
    ram = f", {mem_total:.0f} GB RAM" if mem_total else ""
    return (f"{device_name(device)}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads{ram}, "
            f"bf16 instructions: {', '.join(bf16)}; Linux {platform.release()}, Python {platform.python_version()}, "
            f"torch {torch.__version__}, timm {timm.__version__}")


def summary_row(model: str, precision: str, rows: list[VariantProfile]) -> str:
    by = {r.reduction.split(":")[0]: r for r in rows}
    base, grouped, shallow = by["none"], by["grouped"], by["shallow"]

    def ratio(value):
        return "n/a" if value is None else f"{value:.2f}"

    def saving(ratio_value):
        return "n/a" if ratio_value is None else f"{100 * (1 - ratio_value):.1f}%"

    bound = f"{base.macs_total / shallow.macs_total:.2f} / {base.macs_linear / shallow.macs_linear:.2f}"
    cells = [
        SHORT.get(model, model), precision, str(base.batch_size), f"{base.infer_img_s:.1f}", f"{base.train_img_s:.1f}",
        ratio(shallow.infer_ratio), ratio(shallow.train_ratio), bound,
        ratio(grouped.infer_ratio), ratio(grouped.train_ratio),
        saving(grouped.peak_mem_train_ratio), saving(shallow.peak_mem_train_ratio),
        saving(grouped.static_train_ratio), saving(shallow.static_train_ratio),
    ]
    return "| " + " | ".join(cells) + " |"


def section(args: argparse.Namespace, results: list[tuple[str, str, list[VariantProfile]]], info: dict) -> str:
    header = ("| model | precision | batch | baseline infer img/s | baseline train img/s | shallow/base infer | "
              "shallow/base train | MAC bound (total / linear) | grouped/base infer | grouped/base train | "
              "grouped train-memory saving | shallow train-memory saving | grouped static saving | "
              "shallow static saving |")
    # The published figures (ViT-B/16, inference img/s 1,020 / 1,017 / 1,411 on an unnamed GPU).
    paper_cells = ["paper (GPU; batch, precision unpublished)", "", "", "1,020", "", "1.38", "", "", "1.00", "",
                   "4.3%", "29%", "", ""]
    paper = "| " + " | ".join(paper_cells) + " |"
    lines = [
        HEADING,
        "",
        f"Measured {info['date']} on {info['machine']}. "
        f"Load average (1/5/15 min) {info['load_start']} at the start, {info['load_end']} at the end: other work "
        "shared the machine, so absolute img/s are noisy; the variants were interleaved (each repeat times every "
        "variant once) so drift affects them alike. "
        f"Wall time {info['minutes']:.1f} min.",
        "",
        f"Command: `{info['command']}`",
        "",
        f"Variants none, grouped (pairs, 12 -> 6 MLPs), shallow (half the hidden units); {args.device}, "
        f"batch {args.batch_size}, warm-up runs {args.warmup}, timed repeats {args.repeats}; throughput is the median "
        "over repeats (images/s); ratios are variant / baseline. Training step: forward, cross-entropy, backward, "
        "AdamW step. bf16: torch.autocast (weights fp32).",
        "",
        "- **MAC bound**: baseline MACs / shallow MACs, the speed-up if time were proportional to MACs "
        "(with / without the attention matmuls).",
        "- **train-memory saving**: 1 - peak training memory of the variant / the baseline's. Peak memory on CPU: "
        "peak RSS of a fresh process running one step, minus its RSS before the model was built (weights, batch, "
        "activations, grads, AdamW state and allocator overhead); blocks of 64 KiB or more are mmapped so RSS "
        "follows live tensors (see src/vitreduce/efficiency/memory.py).",
        "- **static saving**: the same for the exact bytes of weights + grads + AdamW state alone (no activations).",
        "- The paper's figures were measured on a GPU whose model, batch and precision were not published; its "
        "memory method was not published either.",
        "",
        header,
        "|" + "---|" * header.count(" | ") + "---|",
        paper,
    ]
    lines += [summary_row(model, precision, rows) for model, precision, rows in results]
    lines += [
        "",
        "GPU figures: not measured yet (no GPU was available to this session).",
        "",
        "Full tables as printed:",
        "",
    ]
    for _model, _precision, rows in results:
        lines += ["```", format_table(rows), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def update_readme(path: Path, text: str) -> None:
    """Replace (or add) this script's section, leaving every other section as it is."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = old.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == HEADING), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        rest = "".join(lines[end:])
        new = "".join(lines[:start]) + text + ("\n" + rest if rest else "")
    write_text(path, new)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    command = shlex.join([os.path.relpath(sys.executable), os.path.relpath(__file__), *sys.argv[1:]])
    info = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(args.device),
            "load_start": "/".join(f"{x:.1f}" for x in os.getloadavg()), "command": command}
    print(info["machine"], flush=True)

    def progress(line: str) -> None:
        print(f"[{(time.monotonic() - started) / 60:5.1f} min] {line}", flush=True)

    results = []
    for model in args.models:
        for precision in args.precisions:
            progress(f"{model} {precision}")
            rows = profile_variants(model, VARIANTS, device=args.device, precision=precision,
                                    batch_size=args.batch_size, mode="both", repeats=args.repeats,
                                    warmup=args.warmup, progress=progress)
            print(format_table(rows), flush=True)
            results.append((model, precision, rows))
    info["load_end"] = "/".join(f"{x:.1f}" for x in os.getloadavg())
    info["minutes"] = (time.monotonic() - started) / 60
    text = section(args, results, info)
    print("\n" + text)
    if args.json_out:
        payload = [{"model": m, "precision": p, "rows": [r.as_dict() for r in rows]} for m, p, rows in results]
        write_json(args.json_out, payload)
    if not args.no_readme:
        update_readme(args.readme, text)
        print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
