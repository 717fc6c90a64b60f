"""``python tests/hostile/isolated_cli.py ARGS``: ``vitreduce ARGS`` with the network guard on, for the corpus
cases that run in a subprocess under a memory limit (harness.run_isolated). A refused network call is
printed as a line starting with harness.NETWORK_MARK."""
from __future__ import annotations

import sys

from harness import NETWORK_MARK, network_guard

if __name__ == "__main__":
    with network_guard() as calls:
        try:
            from vitreduce.cli.main import main

            code = main(sys.argv[1:])
        finally:
            for call in calls:
                print(f"{NETWORK_MARK} {call}", file=sys.stderr)
    sys.exit(code)
