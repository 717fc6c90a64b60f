"""Where tensors run, in what precision and on how many CPU threads: the one place that turns a user's
device, precision and thread choice into torch settings. torch is imported by the functions that use it: the
thread arithmetic and the precision names serve commands that import no torch (a study's dry run, its status)."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING, Literal

from vitreduce.errors import VitreduceError

if TYPE_CHECKING:
    import torch

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "fp16")


def resolve_device(preference: str, option: str = "device") -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cpu', 'cuda' and 'cuda:N' as given, checked.

    Args:
        preference: the user's choice.
        option: how the user set it ('device:' in a config, '--device' on the command line), for errors.
    """
    import torch

    text = str(preference).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise VitreduceError(f"{option}: unknown device {preference!r}; use auto, cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise VitreduceError(f"{option} {preference!r}, but CUDA is not available: torch {torch.__version__} "
                             f"sees no CUDA GPU; use {option} cpu or auto")
    if index and int(index) >= torch.cuda.device_count():
        raise VitreduceError(f"{option} {preference!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(text)


def autocast(precision: Precision, device: torch.device | str):
    """The forward-pass context for a precision: autocast for bf16/fp16 (weights stay fp32, as in
    mixed-precision training), nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch

    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    return torch.autocast(device_type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision])


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a clock read after it measures the work (no-op on CPU)."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


# ---- CPU threads --------------------------------------------------------------------------------------
# torch's default is one thread per core of the machine, whatever else runs there: on a shared 2-core
# machine that made a tiny ViT train 17x slower than with one thread (28 against 470 img/s, measured).


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a cluster job's share), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def busy_cores() -> int:
    """Cores other work keeps busy: the 1-minute load average, rounded (0 where the system has none)."""
    try:
        return int(os.getloadavg()[0] + 0.5)
    except (AttributeError, OSError):
        return 0


def default_threads(share: int = 1) -> int:
    """Threads for each of ``share`` processes that do not oversubscribe the machine: OMP_NUM_THREADS when
    set (the budget of the whole command), else the available cores less the busy ones; at least 1."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    budget = int(env) if env.isdigit() and int(env) > 0 else available_cores() - busy_cores()
    return max(1, budget // max(share, 1))


def check_threads(threads: int | None, option: str = "--threads") -> int | None:
    """``threads`` checked (None: the default, decided later)."""
    if threads is not None and not 1 <= threads <= 4096:
        raise VitreduceError(f"{option} {threads}: use a number of threads from 1 (omit it for the default)")
    return threads


def busy_warning(threads: int) -> str | None:
    """A one-line warning when ``threads`` (all processes together) and the machine's load exceed its cores."""
    cores, busy = available_cores(), busy_cores()
    if busy + threads <= cores:
        return None
    return (f"warning: {threads} thread(s) on {cores} available core(s) with a load average of about {busy}: the "
            f"machine is busier than its cores, expect a slowdown (fewer --threads, or run when it is quieter)")


def set_threads(threads: int | None = None, share: int = 1, warn=None) -> int:
    """Set torch's intra-op threads: ``threads``, or ``default_threads(share)``; warn (one line on stderr,
    or to ``warn``) when the machine is busier than its cores. Returns the threads per process.

    Args:
        threads: what the user asked for (``--threads``), or None.
        share: processes that will run with this many threads each (a study's runs side by side).
        warn: where the warning goes (default: stderr).
    """
    import torch

    per_process = check_threads(threads) or default_threads(share)
    torch.set_num_threads(per_process)
    message = busy_warning(per_process * max(share, 1))
    if message:
        (warn or _to_stderr)(message)
    return per_process


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def torch_threads(threads: int):
    """torch's intra-op threads set to ``threads`` inside the block, put back after it."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
