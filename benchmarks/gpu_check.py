"""One prepared GPU check: every GPU path of vitreduce exercised, every GPU figure measured, in one call.

    .venv/bin/python benchmarks/gpu_check.py --out gpu-check              # on a GPU (within --budget, 450 s by default)
    .venv/bin/python benchmarks/gpu_check.py --out /tmp/check --dry-run   # same code paths, CPU, tiny, about a minute

Writes OUT/gpu_check.json (every section's status, checks and figures), OUT/gpu_check.md (the same as
tables) and prints a summary. Sections are independent: one that fails records its error and the rest
still run. Each has a time budget (its subprocesses are stopped at it, its loops stop early); when the
whole budget (``--budget``) is spent the remaining sections are recorded as skipped. The correctness
sections run first, the figures after, compiled figures last (compilation is the slowest part).
A dry run replaces CUDA by the CPU, the models by tiny ones, inductor by the ``aot_eager`` backend and
nccl by gloo; what needs CUDA (fp16, CUDA memory, decode_jpeg on the device) is recorded as skipped.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import gpu_check_correct as correct
import gpu_check_figures as figures
import timm
import torch
from gpu_check_correct import Check, Skipped

from vitreduce.files import write_json, write_text

SCHEMA = 1
# (name, function, seconds of budget on a GPU): the order they run in.
SECTIONS = [
    ("train_steps", correct.train_steps, 60),
    ("resume", correct.resume, 120),
    ("compile", correct.compile_check, 90),
    ("ddp", correct.ddp, 90),
    ("hessian", correct.hessian, 45),
    ("throughput_eager", figures.throughput_eager, 120),
    ("hvp_time", figures.hvp_time, 45),
    ("data_loading", figures.data_loading, 75),
    ("throughput_compiled", figures.throughput_compiled, 240),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="folder for run directories and generated images (default OUT/scratch)")
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N (a dry run uses cpu)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny models, few steps: checks the script")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for all sections together (default 450; dry run 600)")
    parser.add_argument("--sections", nargs="+", choices=[name for name, _, _ in SECTIONS],
                        help="run only these (default: all)")
    return parser.parse_args(argv)


def machine(device: torch.device) -> dict:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"gpu": gpu, "cpu_cores": os.cpu_count(), "torch": torch.__version__, "timm": timm.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(), "platform": platform.platform()}


def run_section(name: str, fn, check: Check) -> dict:
    """One section: its result dict with status ok / failed / error / skipped, never an exception."""
    start = time.perf_counter()
    try:
        result = {"status": "ok", **fn(check)}
        if result.get("checks") and not all(c["passed"] for c in result["checks"].values()):
            result["status"] = "failed"
    except Skipped as why:
        result = {"status": "skipped", "reason": str(why)}
    except Exception as err:  # noqa: BLE001 (recorded; the other sections still run)
        result = {"status": "error", "error": f"{type(err).__name__}: {err}",
                  "traceback": traceback.format_exc()[-3000:]}
    result["seconds"] = round(time.perf_counter() - start, 2)
    result["budget_s"] = round(check.budget, 1)
    if result["seconds"] > check.budget * 1.1:
        result["over_budget"] = True
    return result


def run_all(args: argparse.Namespace) -> dict:
    dry = args.dry_run
    device = torch.device("cpu") if dry else torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"error: --device {args.device}, but torch {torch.__version__} sees no CUDA GPU; use --dry-run "
                 "to check the script on a CPU")
    args.out.mkdir(parents=True, exist_ok=True)
    total = args.budget or (600.0 if dry else 450.0)
    started = time.perf_counter()
    report = {"schema": SCHEMA, "dry_run": dry, "device": str(device), "date": datetime.datetime.now(
        datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(device), "budget_s": total, "sections": {}}
    for name, fn, budget in SECTIONS:
        if args.sections and name not in args.sections:
            continue
        left = total - (time.perf_counter() - started)
        if left < 5:
            report["sections"][name] = {"status": "skipped", "reason": f"total budget of {total:.0f} s spent"}
            continue
        scratch = (args.scratch or args.out / "scratch") / name
        check = Check(device=device, dry=dry, out=scratch, budget=min(budget, left))
        print(f"[{time.perf_counter() - started:6.1f} s] {name} (budget {check.budget:.0f} s)", flush=True)
        report["sections"][name] = run_section(name, fn, check)
        print(f"           {name}: {report['sections'][name]['status']}", flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["conclusions"] = conclusions(report["sections"])
    return report


def conclusions(sections: dict) -> list[str]:
    """What the figures of several sections say together: does data loading cap training speed?"""
    loading, eager = sections.get("data_loading", {}), sections.get("throughput_eager", {})
    if loading.get("status") != "ok" or eager.get("status") != "ok":
        return ["data loading against training: not compared (a section did not run)"]
    loader = loading["rows"][0]["loader_img_s"]
    lines = []
    for row in eager["rows"]:
        if row["variant"] == "none" and row["train_img_s"]:
            verdict = "caps" if loader < row["train_img_s"] else "does not cap"
            lines.append(f"data loading {verdict} {row['model']} training: loader {loader:.0f} img/s "
                         f"({loading['rows'][0]['workers']} workers) vs {row['train_img_s']:.0f} train img/s")
    return lines


# ---- output -------------------------------------------------------------------------------------------


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "/") if value is not None else ""


def markdown(report: dict) -> str:
    """The report as markdown: a status table, then each section's checks and figure rows."""
    m = report["machine"]
    lines = [f"# GPU check ({'dry run, CPU' if report['dry_run'] else report['device']})", "",
             f"{report['date']}; GPU: {m['gpu'] or 'none'}; {m['cpu_cores']} CPU cores; torch {m['torch']}, "
             f"timm {m['timm']}, CUDA {m['cuda']}; {report['seconds']} s in all.", "",
             "| section | status | seconds | note |", "|---|---|---:|---|"]
    for name, sec in report["sections"].items():
        note = sec.get("reason") or sec.get("error") or ""
        lines.append(f"| {name} | {sec['status']} | {sec.get('seconds', '')} | {_cell(note)} |")
    for name, sec in report["sections"].items():
        if sec.get("checks"):
            lines += ["", f"## {name}: checks", "", "| check | passed | detail |", "|---|---|---|"]
            lines += [f"| {k} | {c['passed']} | {_cell(c['detail'])} |" for k, c in sec["checks"].items()]
        if sec.get("rows"):
            keys = list(dict.fromkeys(k for row in sec["rows"] for k in row))
            lines += ["", f"## {name}: figures", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_cell(row.get(k)) for k in keys) + " |" for row in sec["rows"]]
        if sec.get("notes"):
            lines += [""] + [f"- {note}" for note in sec["notes"]]
    lines += ["", "## Conclusions", ""] + [f"- {line}" for line in report["conclusions"]]
    return "\n".join(lines) + "\n"


def summary(report: dict) -> str:
    counts: dict[str, int] = {}
    for sec in report["sections"].values():
        counts[sec["status"]] = counts.get(sec["status"], 0) + 1
    lines = [f"gpu_check: {report['device']}{' (dry run)' if report['dry_run'] else ''}, {report['seconds']} s: "
             + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
    for name, sec in report["sections"].items():
        failed = [k for k, c in sec.get("checks", {}).items() if not c["passed"]]
        extra = sec.get("reason") or sec.get("error") or (f"failed: {', '.join(failed)}" if failed else "")
        lines.append(f"  {name:20s} {sec['status']:8s} {sec.get('seconds', 0):7.1f} s  {extra}")
        for headline in sec.get("headlines", []):
            lines.append(f"  {'':20s} {headline}")
    return "\n".join(lines + [f"  {line}" for line in report["conclusions"]])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run_all(args)
    write_json(args.out / "gpu_check.json", report)
    write_text(args.out / "gpu_check.md", markdown(report))
    print(summary(report))
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    return 0 if all(s["status"] in ("ok", "skipped") for s in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
