"""Run a segmentation probe and SIGKILL this process at the n-th probe event: a crash at a chosen moment.

    python tests/probe_killer.py EVENT:N MODEL_FILE DATA OUT EPOCHS

EVENT is "epoch" (an epoch's state saved). The exact-resume test starts this as a subprocess, then
finishes the probe in-process and compares it with an uninterrupted one.
"""
from __future__ import annotations

import sys

from killer import kill_at

from vitreduce.probe import ProbeOptions, run_segmentation_probe


def main(argv: list[str]) -> int:
    spec, model_file, data, out, epochs = argv
    run_segmentation_probe(model_file, data, out, ProbeOptions(epochs=int(epochs), batch_size=8), device="cpu",
                           progress="none", on_event=kill_at(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
