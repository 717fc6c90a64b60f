"""summary.json: the report's every number, written from the report's records and read back into them.

Format 2 keeps the variants and the study-level results apart: ``{"format": 2, "study": {"name", "baseline",
"pareto"}, "variants": {<variant>: <entry>}}``, so any name can be a variant's. Format 1 (vitreduce 0.1.0 and
until format 2) held the variants at the top level, with a ``pareto`` key beside them; ``read_summary``
reads both.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vitreduce.errors import VitreduceError

SUMMARY_FORMAT = 2


@dataclass(frozen=True)
class Summary:
    """summary.json as records: the study-level results and the variants' entries (in the study's order)."""

    study: dict  # name, baseline, pareto (null where the report has no Pareto section)
    variants: dict[str, dict]
    format: int = SUMMARY_FORMAT

    def document(self) -> dict:
        return {"format": self.format, "study": self.study, "variants": self.variants}


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def summary_text(summary: Summary) -> str:
    """Strict JSON (no NaN token: a figure that is undefined is null)."""
    return json.dumps(summary.document(), indent=2, allow_nan=False, default=_json_default) + "\n"


def read_summary(path: Path | str) -> Summary:
    """A summary.json of format 2, or of format 1 (variants at the top level, ``pareto`` among them)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise VitreduceError(f"{path} is not a JSON summary ({err}); rewrite it with `vitreduce report`") from None
    if not isinstance(data, dict):
        raise VitreduceError(f"{path} must hold a JSON object")
    if "format" in data:
        if data["format"] != SUMMARY_FORMAT or not all(isinstance(data.get(k), dict) for k in ("study", "variants")):
            raise VitreduceError(f"{path} is summary.json format {data['format']!r} without its study and variants "
                                 f"objects; this vitreduce reads formats 1 and {SUMMARY_FORMAT}")
        return Summary(data["study"], data["variants"])
    variants = {k: v for k, v in data.items() if k != "pareto"}
    return Summary({"name": None, "baseline": next((k for k, v in variants.items() if v.get("baseline")), None),
                    "pareto": data.get("pareto")}, variants, format=1)
