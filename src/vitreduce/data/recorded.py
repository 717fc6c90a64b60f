"""What a model file records about the data it was trained on: its class names and its eval preprocessing.

A model file travels (``vitreduce reduce`` writes outside the run, people copy files around), so both
go into its header when a run saves it: wherever the file lies, ``vitreduce eval`` and the analyses
read its images as the run did and map each class folder to the output unit it was trained for. The
header is a ``{str: str}`` map, so each entry is JSON text; this module writes and reads them (the
rest of the header belongs to ``vitreduce.reduction.checkpoint``).
"""
from __future__ import annotations

import json
from typing import Any

from vitreduce.data.config import AugmentConfig
from vitreduce.errors import VitreduceError

CLASSES = "classes"  # header key: JSON list of the class folder names, in output-unit order
PREPROCESSING = "eval_preprocessing"  # header key: JSON object of the eval transform's settings
PREPROCESSING_FIELDS = ("interpolation", "crop_pct", "mean", "std")  # what the eval transform reads


def header_entries(classes: list[str] | None, augment: AugmentConfig | None) -> dict[str, str]:
    """The header entries recording ``classes`` and ``augment``'s eval settings (either may be left out)."""
    entries = {}
    if classes is not None:
        entries[CLASSES] = json.dumps(list(classes))
    if augment is not None:
        entries[PREPROCESSING] = json.dumps(preprocessing_settings(augment))
    return entries


def carried(header: dict[str, str]) -> dict[str, str]:
    """The entries of a model file's header that a file made from it (``vitreduce reduce``) keeps."""
    return {key: header[key] for key in (CLASSES, PREPROCESSING) if key in header}


def preprocessing_settings(augment: AugmentConfig) -> dict[str, Any]:
    """The fields the eval transform reads, JSON-ready."""
    return {"interpolation": augment.interpolation, "crop_pct": augment.crop_pct, "mean": list(augment.mean),
            "std": list(augment.std)}


def recorded_preprocessing(header: dict[str, str], source: str) -> AugmentConfig | None:
    """The eval preprocessing a model file's header records, or None when it records none."""
    text = header.get(PREPROCESSING)
    if text is None:
        return None
    settings = _json(text, PREPROCESSING, source)
    if not isinstance(settings, dict) or set(settings) - set(PREPROCESSING_FIELDS):
        raise VitreduceError(f"{source}: header '{PREPROCESSING}' must be an object with keys "
                             f"{', '.join(PREPROCESSING_FIELDS)}; {_EDITED}")
    try:
        return AugmentConfig(**settings)
    except (ValueError, TypeError) as err:  # pydantic's ValidationError is a ValueError
        raise VitreduceError(f"{source}: header '{PREPROCESSING}' holds settings vitreduce cannot use ({err}); "
                             f"{_EDITED}") from None


def recorded_classes(header: dict[str, str], source: str) -> list[str] | None:
    """The class names a model file's header records (output unit i is class i), or None when it records none."""
    text = header.get(CLASSES)
    if text is None:
        return None
    names = _json(text, CLASSES, source)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise VitreduceError(f"{source}: header '{CLASSES}' must be a list of distinct class names; {_EDITED}")
    return names


def check_classes(recorded: list[str] | None, found: list[str], model_file: str, folder: str) -> str:
    """Refuse data whose class folders are not the classes the model was trained on, in the same order
    (labels are folder positions, so one renamed, missing or extra folder shifts every label after it);
    returns a line saying what was checked.

    Args:
        recorded: the model file's classes (``recorded_classes``), None for a file that records none.
        found: the class folder names of the split, sorted as the loaders sort them.
        model_file: the model file, named in messages.
        folder: the split folder, named in messages.
    """
    if recorded is None:
        return (f"classes: {model_file} records no class names (written before they were recorded, or from plain "
                f"weights): the {len(found)} folders of {folder} are mapped to output units by sorted name")
    if recorded == found:
        return f"classes: the {len(found)} folders of {folder} match the model's classes"
    missing, extra = [n for n in recorded if n not in found], [n for n in found if n not in recorded]
    if missing or extra:
        detail = f"the model's classes missing there: {_few(missing)}; folders the model does not know: {_few(extra)}"
    else:
        moved = [n for n, m in zip(found, recorded, strict=True) if n != m]
        detail = f"the same names in another order ({_few(moved)} at other positions)"
    raise VitreduceError(
        f"{folder} does not hold the classes {model_file} was trained on ({detail}); labels are folder positions, "
        "so the scores would be for shifted labels. Name the class folders exactly as the training data did "
        f"({_few(recorded)})")


def _few(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return (", ".join(repr(n) for n in names[:shown]) + more) if names else "none"


_EDITED = "the file was edited or damaged (vitreduce writes this header itself)"


def _json(text: str, key: str, source: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise VitreduceError(f"{source}: header '{key}' is not valid JSON ({err}); {_EDITED}") from None
