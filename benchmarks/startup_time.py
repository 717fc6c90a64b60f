"""How long the command line takes to start: `vitreduce --version`, `vitreduce study status DIR` and
`vitreduce study SPEC --dry-run` against `python -c "import torch"` (the import every vitreduce command used to
pay), and `study SPEC --dry-run --costs` (which builds the models, with torch). Each repeat runs every command,
in alternating order (interleaved, so the machine's load drifts over all alike); prints the medians, min and
max, and the machine's load. The study is a tiny spec (2 variants x 2 seeds) written into a temporary folder,
its study directory made by one untimed dry run.

--baseline-src DIR also times `study status` and `study --dry-run` of another source tree (its `src/` put
first on PYTHONPATH), interleaved with the rest: e.g. an earlier commit's, `git archive COMMIT src | tar -x -C DIR`.

    .venv/bin/python benchmarks/startup_time.py [--repeats 11] [--commands version status dry-run costs torch]
        [--baseline-src DIR]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

VITREDUCE = str(Path(sys.executable).with_name("vitreduce"))
Command = tuple[list[str], dict[str, str] | None]  # argv, and the environment (None: this one)


def tiny_study(folder: Path) -> tuple[Path, Path]:
    """A spec of a 2-block ViT, 2 variants x 2 seeds (its data folder absent: a dry run notes it), and its
    study directory."""
    base = {"device": "cpu", "epochs": 2, "data": {"root": str(folder / "data"), "workers": 0},
            "model": {"name": "vit_tiny_patch16_224", "num_classes": 4, "img_size": 32, "patch_size": 8,
                      "embed_dim": 64, "depth": 2, "num_heads": 2}}
    spec = {"name": "startup", "base": base, "seeds": [0, 1],
            "variants": [{"name": "baseline", "overrides": {"model.reduction": "none"}},
                         {"name": "grouped", "overrides": {"model.reduction": "grouped"}}]}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, folder / "study"


def commands(spec: Path, study: Path, chosen: list[str] | None, baseline: Path | None) -> dict[str, Command]:
    """{the command as printed: how to run it}, the ``chosen`` short names only (None: all)."""
    dry = [VITREDUCE, "study", str(spec), "--dry-run", "--out", str(study)]
    status = [VITREDUCE, "study", "status", str(study)]
    table = {
        "version": {"vitreduce --version": ([VITREDUCE, "--version"], None)},
        "status": {"vitreduce study status DIR": (status, None)},
        "dry-run": {"vitreduce study SPEC --dry-run": (dry, None)},
        "costs": {"vitreduce study SPEC --dry-run --costs": ([*dry, "--costs"], None)},
        "torch": {'python -c "import torch"': ([sys.executable, "-c", "import torch"], None)},
    }
    if baseline is not None:
        env = {**os.environ, "PYTHONPATH": str(baseline / "src")}
        table["status"]["vitreduce study status DIR (baseline src)"] = (status, env)
        table["dry-run"]["vitreduce study SPEC --dry-run (baseline src)"] = (dry, env)
    return {name: command for key, entries in table.items() if chosen is None or key in chosen
            for name, command in entries.items()}


def wall(command: Command) -> float:
    start = time.perf_counter()
    subprocess.run(command[0], env=command[1], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--commands", nargs="+", default=None, help="time only these (default: all)",
                        choices=["version", "status", "dry-run", "costs", "torch"])
    parser.add_argument("--baseline-src", type=Path, default=None, metavar="DIR",
                        help="also time status and dry-run with DIR/src first on PYTHONPATH")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        spec, study = tiny_study(Path(folder))
        chosen = commands(spec, study, args.commands, args.baseline_src)
        wall(commands(spec, study, ["dry-run"], None)["vitreduce study SPEC --dry-run"])  # the study directory
        for command in chosen.values():  # warm the file cache once, untimed
            wall(command)
        times: dict[str, list[float]] = {name: [] for name in chosen}
        load = os.getloadavg()
        for repeat in range(args.repeats):
            names = list(chosen) if repeat % 2 == 0 else list(reversed(chosen))
            for name in names:
                times[name].append(wall(chosen[name]))
    print(f"{args.repeats} interleaved repeats; load average {load[0]:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end; {os.cpu_count()} cores")
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values):.3f} s (min {min(values):.3f}, max {max(values):.3f})")


if __name__ == "__main__":
    main()
