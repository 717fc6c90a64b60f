"""summary.csv: metrics.jsonl in the column layout of timm's train.py (``timm.utils.update_summary``).

timm's train.py writes one row per epoch with the columns ``epoch, train_loss, eval_loss, eval_top1,
eval_top5, lr``: the epoch counted from 0, the mean training loss, the eval metrics (of the EMA model
when the run has one, as timm's train.py does) and the learning rate of the epoch's last step. A run
directory's summary.csv holds the same columns, so plotting scripts written for timm's output read it
unchanged. It is rewritten whole from metrics.jsonl (atomically) at each epoch's end and when a resumed
run drops epochs it trains again, so the two always agree.
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from typing import Any

from vitreduce.files import write_text

SUMMARY = "summary.csv"
# timm 1.0's update_summary: epoch, then train_*, eval_*, lr, in the order its train.py fills them.
COLUMNS = ("epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr")


def summary_row(record: dict[str, Any]) -> list[Any]:
    """One metrics.jsonl record as a summary.csv row (``COLUMNS``); a missing value is NaN, as in timm."""
    scored = record.get("ema") or record.get("raw") or {}
    values = [record.get("train_loss"), scored.get("loss"), scored.get("top1"), scored.get("top5"), record.get("lr")]
    return [record["epoch"] - 1, *(float("nan") if value is None else value for value in values)]


def write_summary(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Write summary.csv (header and one row per record, in the records' order) atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")  # csv.DictWriter's default, which timm uses
    writer.writerow(COLUMNS)
    writer.writerows(summary_row(record) for record in records)
    write_text(path, buffer.getvalue())
