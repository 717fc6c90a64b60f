"""What commands print: plain-text tables, durations, and a progress bar or plain progress lines."""
from __future__ import annotations

import sys
import time
from collections.abc import Sequence


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

    def start_epoch(self, epoch: int, batches: int, start_batch: int) -> None:
        """Begin epoch ``epoch`` (from 1) of ``batches`` batches, ``start_batch`` of them already done."""
        self.epoch, self.batches, self.done = epoch, batches, start_batch
        self.images, self.steps, self.start = 0, 0, time.perf_counter()
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=batches, initial=start_batch, desc=f"epoch {epoch}/{self.epochs}",
                             unit="batch", dynamic_ncols=True, leave=False)

    def update(self, batches: int, images: int, loss: float, lr: float) -> None:
        """After one optimizer step over ``batches`` micro-batches of ``images`` images in total."""
        self.done += batches
        self.images += images
        self.steps += 1
        elapsed = time.perf_counter() - self.start
        rate = self.images / elapsed if elapsed > 0 else 0.0
        if self._bar is not None:
            self._bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.2e} {rate:.0f} img/s", refresh=False)
            self._bar.update(batches)
        elif self.mode == "lines" and (self.steps % self.every_steps == 0 or self.done == self.batches):
            eta = elapsed / self.steps * (self.batches - self.done) / batches if self.steps else 0.0
            self.write(f"epoch {self.epoch}/{self.epochs} batch {self.done}/{self.batches} loss {loss:.4f} "
                       f"lr {lr:.3e} {rate:.1f} img/s eta {clock(eta)}")

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
