"""What commands print: plain-text tables, durations, a progress bar or plain progress lines, countdowns,
and the tee that also appends a command's output to a log file (RUN_DIR/train.log)."""
from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# Set in a child's environment by a parent that already appends the child's output to its log
# (a study running `vitreduce train` under torchrun), so that the child does not log its lines twice.
LOGGED_ENV = "VITREDUCE_LOGGED"


def clock(seconds: float) -> str:
    """A duration as MM:SS, or H:MM:SS from one hour on (as tqdm shows it)."""
    minutes, secs = divmod(int(round(max(seconds, 0.0))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], numbers_right: bool = False) -> str:
    """A header, a dashed rule and the rows, columns two spaces apart.

    Args:
        headers: the column names.
        rows: the cells, already formatted.
        numbers_right: right-align every column but the first (tables of numbers).
    """
    table = [list(map(str, headers)), *[list(map(str, row)) for row in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        if numbers_right:
            padded = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        else:
            padded = [c.ljust(w) for c, w in zip(cells, widths, strict=True)]
        return "  ".join(padded).rstrip()

    return "\n".join([line(table[0]), "  ".join("-" * w for w in widths), *map(line, table[1:])])


class Progress:
    """A tqdm bar with images/s and ETA on a terminal; plain periodic lines otherwise (CI, log files).

    Two ETAs: the epoch's, and the run's (``run eta``): every batch left in this and the later epochs at
    this session's pace so far, evaluations and checkpoints included (the session's wall time over the
    batches it trained).

    Args:
        mode: 'auto' (bar when stderr is a terminal), 'bar', 'lines' or 'none'.
        epochs: total epochs, for the "epoch e/E" prefix.
        every_steps: optimizer steps between plain lines.
    """

    def __init__(self, mode: str, epochs: int, every_steps: int):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode, self.epochs, self.every_steps = mode, epochs, every_steps
        self._bar = None
        self.session_start, self.session_batches = None, 0

    def start_epoch(self, epoch: int, batches: int, start_batch: int) -> None:
        """Begin epoch ``epoch`` (from 1) of ``batches`` batches, ``start_batch`` of them already done."""
        self.epoch, self.batches, self.done = epoch, batches, start_batch
        self.images, self.steps, self.start = 0, 0, time.perf_counter()
        if self.session_start is None:
            self.session_start = self.start
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=batches, initial=start_batch, desc=f"epoch {epoch}/{self.epochs}",
                             unit="batch", dynamic_ncols=True, leave=False)

    def update(self, batches: int, images: int, loss: float, lr: float) -> None:
        """After one optimizer step over ``batches`` micro-batches of ``images`` images in total."""
        self.done += batches
        self.images += images
        self.steps += 1
        self.session_batches += batches
        now = time.perf_counter()
        elapsed = now - self.start
        rate = self.images / elapsed if elapsed > 0 else 0.0
        if self._bar is not None:
            run_eta = clock(self.run_eta(now))
            self._bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.2e} {rate:.0f} img/s run eta {run_eta}", refresh=False)
            self._bar.update(batches)
        elif self.mode == "lines" and (self.steps % self.every_steps == 0 or self.done == self.batches):
            eta = elapsed / self.steps * (self.batches - self.done) / batches if self.steps else 0.0
            self.write(f"epoch {self.epoch}/{self.epochs} batch {self.done}/{self.batches} loss {loss:.4f} "
                       f"lr {lr:.3e} {rate:.1f} img/s eta {clock(eta)} run eta {clock(self.run_eta(now))}")

    def run_eta(self, now: float) -> float:
        """Seconds until the run's last batch: the batches left in all epochs at this session's pace."""
        left = self.batches - self.done + (self.epochs - self.epoch) * self.batches
        return (now - self.session_start) / self.session_batches * left if self.session_batches else 0.0

    def end_epoch(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def write(self, message: str) -> None:
        """Print a line without breaking the bar."""
        if self.mode == "none":
            return
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)


class Countdown:
    """Items of a known number done one after another (or ``parallel`` at a time): a line with how many are
    done and left, the mean time per item, and the ETA (mean x rounds of ``parallel`` items left).

    Args:
        total: items planned.
        unit: what an item is, e.g. ``run``.
        parallel: items done at once.
    """

    def __init__(self, total: int, unit: str, parallel: int = 1):
        self.total, self.unit, self.parallel = total, unit, max(parallel, 1)
        self.done, self.seconds = 0, []

    def tick(self, seconds: float | None = None) -> str:
        """One more item done, in ``seconds`` (None: not timed, e.g. skipped); the line to print."""
        self.done += 1
        if seconds is not None:
            self.seconds.append(seconds)
        left = max(self.total - self.done, 0)
        text = f"{self.done}/{self.total} {self.unit}s done, {left} left"
        if self.seconds:
            mean = sum(self.seconds) / len(self.seconds)
            text += f", {clock(mean)} per {self.unit} on average"
            if left:
                text += f", ETA {clock(mean * -(-left // self.parallel))}"
        return text


class _Log:
    """A log file opened on its first line (a command refused before any output leaves no file behind)."""

    def __init__(self, path: str | os.PathLike):
        self.path, self.handle = Path(path), None

    def line(self, text: str) -> None:
        if self.handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.path, "a")  # noqa: SIM115 (closed by tee)
        self.handle.write(text + "\n")
        self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


class _Tee:
    """A text stream that also appends complete lines to a log (a progress bar's \\r redraws: last state only).

    With a prefix, the terminal gets whole lines, each prefixed (several runs share one terminal).
    """

    def __init__(self, stream, log: _Log, prefix: str = ""):
        self.stream, self.log, self.prefix, self.partial = stream, log, prefix, ""

    def write(self, text: str) -> int:
        if not self.prefix:
            self.stream.write(text)
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            line = line.rsplit("\r", 1)[-1]
            self.log.line(line)
            if self.prefix:
                self.stream.write(f"{self.prefix}{line}\n")
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


@contextlib.contextmanager
def tee(log_path: str | os.PathLike, prefix: str = ""):
    """Inside the block, stdout and stderr also go, line by line, to the end of ``log_path``.

    Args:
        log_path: the log file, appended to (created, with its folder, on the first line).
        prefix: put before each line on the terminal (not in the log).
    """
    log = _Log(log_path)
    try:
        with contextlib.redirect_stdout(_Tee(sys.stdout, log, prefix)), \
                contextlib.redirect_stderr(_Tee(sys.stderr, log, prefix)):
            yield
    finally:
        log.close()
