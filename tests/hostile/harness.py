"""Running vitreduce on hostile input and judging how it ended.

The contract every hostile input must meet: ``vitreduce VERB ...`` ends with exit 0 (a valid result) or
exit 2 with one line ``vitreduce VERB: error: ...`` on stderr (argparse's own usage error counts), no
Python traceback, no other exception, and no attempt to reach the network. Guards keep a broken case
from hurting the machine: a memory ceiling (RLIMIT_AS), a hang alarm (a guard against a hang, not a
performance bound), and sockets that refuse to connect anywhere but a local AF_UNIX peer (DataLoader
workers share tensors over those).

Imports only the standard library at the top: ``isolated_cli.py`` uses the network guard before
vitreduce is imported.
"""
from __future__ import annotations

import contextlib
import io
import os
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
GIB = 1 << 30
HEADROOM = 4 * GIB  # address space an in-process case may add to what the test process already maps
ISOLATED_LIMIT = 8 * GIB  # address space of a subprocess case: importing torch alone maps about 3.6 GiB
HANG_S = 60  # an in-process case still running after this long is reported as hanging
ISOLATED_HANG_S = 120  # the same for a subprocess case, which first spends seconds importing torch
ERROR_MAX_CHARS = 20_000  # a clear error is short; the billion-laughs one was 2.1 GB
NETWORK_MARK = "HOSTILE-TEST NETWORK CALL:"


class Hang(BaseException):
    """Raised by the hang alarm; a BaseException so that no ``except Exception`` in the code under test eats it."""


class NetworkRefused(BaseException):
    """Raised at the first network call: a BaseException, so no retry loop (huggingface_hub retries
    OSError with back-off for tens of seconds) keeps the case running."""


@contextlib.contextmanager
def network_guard() -> Iterator[list[str]]:
    """Every DNS lookup and every connect other than to an AF_UNIX socket is recorded and refused (NetworkRefused)."""
    calls: list[str] = []
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def refuse(what: str, args: tuple) -> NetworkRefused:
        calls.append(f"{what}{args!r}"[:300])
        return NetworkRefused(f"network access refused by the hostile-input tests: {what}{args!r}"[:300])

    def guarded(original):
        def method(self, *args):
            if self.family == socket.AF_UNIX:
                return original(self, *args)
            raise refuse("socket.connect", args)
        return method

    def refused(what: str):
        def function(*args, **kwargs):
            raise refuse(what, args)
        return function

    saved = (socket.getaddrinfo, socket.create_connection)
    socket.socket.connect, socket.socket.connect_ex = guarded(connect), guarded(connect_ex)
    socket.getaddrinfo, socket.create_connection = refused("socket.getaddrinfo"), refused("socket.create_connection")
    try:
        yield calls
    finally:
        socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
        socket.getaddrinfo, socket.create_connection = saved


@contextlib.contextmanager
def hang_guard(seconds: float = HANG_S) -> Iterator[None]:
    """Raise Hang in the main thread if the block is still running after ``seconds``."""
    def alarm(signum, frame):
        raise Hang(f"still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _mapped_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def memory_guard(headroom: int = HEADROOM) -> Iterator[None]:
    """Lower this process's address-space ceiling to what it maps now plus ``headroom``, then restore it:
    an allocation beyond fails (MemoryError, or torch's RuntimeError) instead of exhausting the machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _mapped_bytes() + headroom
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@dataclass
class Outcome:
    """How one command ended."""

    verb: str
    code: int | None = None
    stderr: str = ""
    raised: str | None = None  # an exception that escaped vitreduce.cli.main (or a hang, a signal)
    network: list[str] = field(default_factory=list)
    stderr_chars: int = 0


def run_cli(argv: Sequence[str], hang_s: float = HANG_S) -> Outcome:
    """``vitreduce.cli.main(argv)`` in this process, under the network, memory and hang guards."""
    from vitreduce.cli.main import main

    outcome = Outcome(verb=argv[0] if argv else "")
    out, err = io.StringIO(), io.StringIO()
    with network_guard() as calls:
        try:
            with memory_guard(), hang_guard(hang_s), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                outcome.code = main(list(argv))
        except SystemExit as exit_:  # argparse refusing a flag
            outcome.code = exit_.code if isinstance(exit_.code, int) else 1
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 (any escape is what the test reports)
            outcome.raised = f"{type(exc).__name__}: {exc}"[:500]
    outcome.network = calls
    outcome.stderr = err.getvalue()
    outcome.stderr_chars = len(outcome.stderr)
    return outcome


def _limit_child_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ISOLATED_LIMIT, ISOLATED_LIMIT))


def run_isolated(argv: Sequence[str], workdir: Path, timeout_s: float = ISOLATED_HANG_S) -> Outcome:
    """``vitreduce ARGV`` in a subprocess with one thread, an 8 GiB address-space limit and the network
    guard (``isolated_cli.py``); its output goes to files, of which only the ends are read."""
    outcome = Outcome(verb=argv[0] if argv else "")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    err_path = workdir / "isolated.stderr"
    with open(workdir / "isolated.stdout", "wb") as out, open(err_path, "wb") as err:
        try:
            proc = subprocess.run([sys.executable, str(HERE / "isolated_cli.py"), *argv], cwd=workdir, env=env,
                                  stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                  preexec_fn=_limit_child_memory, timeout=timeout_s)
            outcome.code = proc.returncode
            if proc.returncode < 0:
                outcome.raised = f"killed by signal {-proc.returncode}"
        except subprocess.TimeoutExpired:
            outcome.raised = f"Hang: still running after {timeout_s:g} s (killed)"
    outcome.stderr_chars = err_path.stat().st_size
    with open(err_path, "rb") as err:
        head = err.read(ERROR_MAX_CHARS)
        err.seek(max(err.tell(), outcome.stderr_chars - ERROR_MAX_CHARS))
        tail = err.read()
    outcome.stderr = (head + tail).decode("utf-8", "replace")
    outcome.network = [line for line in outcome.stderr.splitlines() if line.startswith(NETWORK_MARK)]
    return outcome


def problems(outcome: Outcome, expect_error: bool = False, not_in: Sequence[str] = ()) -> list[str]:
    """What is wrong with how a hostile case ended (empty: it met the contract)."""
    found = []
    if outcome.raised:
        found.append(f"raised {outcome.raised}")
    if outcome.network:
        found.append(f"reached for the network ({len(outcome.network)} calls): {outcome.network[0]}")
    if "Traceback (most recent call last)" in outcome.stderr:
        found.append("printed a traceback")
    if outcome.code not in (0, 2):
        found.append(f"exit code {outcome.code}")
    if expect_error and outcome.code == 0:
        found.append("accepted (exit 0), but this input must be refused with a clear error")
    if outcome.code == 2:
        found.extend(_error_problems(outcome))
    found.extend(f"the message says {text!r}" for text in not_in if text in outcome.stderr)
    return found


def _error_problems(outcome: Outcome) -> list[str]:
    if outcome.stderr_chars > ERROR_MAX_CHARS:
        return [f"an error message of {outcome.stderr_chars:,} characters"]
    prefix = f"vitreduce {outcome.verb}: error:"
    lines = [line for line in outcome.stderr.splitlines() if line.startswith(prefix)]
    if "usage:" in outcome.stderr and ": error:" in outcome.stderr:
        return []  # argparse refused a flag
    if len(lines) != 1:
        return [f"exit 2 with {len(lines)} lines starting {prefix!r}"]
    return []


def describe(outcome: Outcome, found: list[str]) -> str:
    """The assertion message: what is wrong, then the end of stderr."""
    tail = f"\n--- stderr (last 1500 of {outcome.stderr_chars:,} chars) ---\n" + outcome.stderr[-1500:]
    return "; ".join(found) + tail


def read_header(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def write_checkpoint(source: Path, dest: Path, header: dict[str, str]) -> Path:
    """``source``'s tensors written to ``dest`` under another header (all values text, as safetensors wants)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    save_file(tensors, str(dest), metadata=header)
    return dest
