"""summary.json: the report's every number, written from the report's records and read back into them.

Format 2 keeps the variants and the study-level results apart: ``{"format": 2, "study": {"name", "baseline",
"primary", "pareto"}, "variants": {<variant>: <entry>}}``, so any name can be a variant's. Format 1 (vitreduce 0.1.0 and
until format 2) held the variants at the top level, with a ``pareto`` key beside them; ``read_summary``
reads both into the same records (vitreduce.report.records), a format 1 file upgraded on the way: what it
predates is None (or empty), and vitreduce 0.1.0's GMACs are read as the MAC counts they round to.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from vitreduce.errors import VitreduceError
from vitreduce.reduction.accounting import upgrade_record
from vitreduce.report import codec
from vitreduce.report.records import StudyResults, VariantEntry

SUMMARY_FORMAT = 2


@dataclass(frozen=True)
class Summary:
    """summary.json as records: the study-level results and the variants' entries (in the study's order)."""

    study: StudyResults
    variants: dict[str, VariantEntry]
    format: int = SUMMARY_FORMAT

    def to_json(self) -> dict:
        """The format 2 document (a summary read from a format 1 file is written as format 2)."""
        document = codec.to_json(Summary, self)
        return {"format": SUMMARY_FORMAT, "study": document["study"], "variants": document["variants"]}

    @classmethod
    def from_json(cls, data: dict) -> Summary:
        """The document's records (``format``: the file's), each variant's seed-level results named."""
        summary = codec.from_json(Summary, data)
        return cls(summary.study, {name: _named(entry, name) for name, entry in summary.variants.items()},
                   summary.format)


def _named(entry: VariantEntry, name: str) -> VariantEntry:
    """summary.json keeps a variant's seed-level results in its entry, without its name: given back here."""
    vs = entry.vs_baseline
    if vs is None:
        return entry
    named = tuple(dataclasses.replace(r, variant=name) for r in vs.seed_level)
    return dataclasses.replace(entry, vs_baseline=dataclasses.replace(vs, seed_level=named))


def summary_text(summary: Summary) -> str:
    """Strict JSON (no NaN token: a figure that is undefined is null)."""
    return json.dumps(summary.to_json(), indent=2, allow_nan=False) + "\n"


def _no_constant(token: str):
    raise ValueError(f"{token} is not JSON (an undefined figure is null)")


def read_summary(path: Path | str) -> Summary:
    """A summary.json of format 2, or of format 1 (variants at the top level, ``pareto`` among them)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(), parse_constant=_no_constant)  # as strict as summary_text writes
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as err:
        raise VitreduceError(f"{path} is not a JSON summary ({err}); rewrite it with `vitreduce report`") from None
    if not isinstance(data, dict):
        raise VitreduceError(f"{path} must hold a JSON object")
    if "format" in data:
        if data["format"] != SUMMARY_FORMAT or not all(isinstance(data.get(k), dict) for k in ("study", "variants")):
            raise VitreduceError(f"{path} is summary.json format {data['format']!r} without its study and variants "
                                 f"objects; this vitreduce reads formats 1 and {SUMMARY_FORMAT}")
        document = _earlier_format_2(data)
    else:
        document = upgrade(data)
    try:
        return Summary.from_json(document)
    except codec.CodecError as err:
        raise VitreduceError(f"{path} does not hold a summary this vitreduce reads ({err}); rewrite it with "
                             "`vitreduce report`") from None


# Keys each variant's entry gained after vitreduce 0.1.0, and what a format 1 file without them is read as.
_SINCE_0_1 = {"outcomes": None, "steps_trained": None, "ema_decay": None, "step_spikes_mean": None,
              "step_spikes_std": None, "throughput": None, "sharpness": {}}
_VS_BASELINE_SINCE_0_1 = {"primary": None, "correction": None, "effect": None, "seed_level": [], "image_level": None}


def _earlier_format_2(data: dict) -> dict:
    """A format 2 file written before ``study.primary`` and the probe family's ``evidence`` were recorded: the
    metric unknown (None), the probe's tests exploratory (as they were until a study could make them primary)."""
    data = {**data, "study": {"primary": None, **data["study"]}}
    for entry in data["variants"].values():
        test = (entry.get("segmentation") or {}).get("miou_vs_baseline") if isinstance(entry, dict) else None
        if isinstance(test, dict) and isinstance(test.get("family"), dict):
            test["family"] = {"evidence": "exploratory", **test["family"]}
    return data


def upgrade(data: dict) -> dict:
    """A format 1 document (variants at the top level, ``pareto`` beside them) as a format 2 one."""
    variants = {k: dict(v) for k, v in data.items() if k != "pareto" and isinstance(v, dict)}
    for entry in variants.values():
        upgrade_record(entry)
        for key, value in _SINCE_0_1.items():
            entry.setdefault(key, value)
        if isinstance(entry.get("vs_baseline"), dict):
            entry["vs_baseline"] = {**_VS_BASELINE_SINCE_0_1, **entry["vs_baseline"]}
    baseline = next((k for k, v in variants.items() if v.get("baseline")), None)
    return {"format": 1, "study": {"name": None, "baseline": baseline, "primary": None, "pareto": data.get("pareto")},
            "variants": variants}
