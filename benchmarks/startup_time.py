"""How long the command line takes to start: `vitreduce --version` against `python -c "import torch"` (the import
every vitreduce command used to pay). Each repeat runs both, in alternating order (interleaved, so the machine's
load drifts over both alike); prints the medians, min and max, and the machine's load.

    .venv/bin/python benchmarks/startup_time.py [--repeats 11]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "vitreduce --version": [str(Path(sys.executable).with_name("vitreduce")), "--version"],
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
}


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    for command in COMMANDS.values():  # warm the file cache once, untimed
        wall(command)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    load = os.getloadavg()
    for repeat in range(args.repeats):
        names = list(COMMANDS) if repeat % 2 == 0 else list(reversed(COMMANDS))
        for name in names:
            times[name].append(wall(COMMANDS[name]))
    print(f"{args.repeats} interleaved repeats; load average {load[0]:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end; {os.cpu_count()} cores")
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values):.3f} s (min {min(values):.3f}, max {max(values):.3f})")


if __name__ == "__main__":
    main()
