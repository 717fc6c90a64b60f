"""A study's runs: the spec expanded into one validated run per variant x seed, and the checks and
files made before any run starts.

``expand`` turns a spec into ``RunPlan``s; ``preflight`` builds every model on the meta device and checks
every dataset (without timm, as a dry run without ``--costs`` does: the datasets only); ``prepare_study_dir``
records the resolved spec in ``study.yaml`` and refuses a spec that would change any run;
``ensure_synth_data`` makes the built-in datasets once; ``prepare_runs`` writes each unfinished run's
config.yaml.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from vitreduce.config_tree import merge, read_yaml, set_key
from vitreduce.data import ensure_synth
from vitreduce.data.synth import SYNTH_PREFIX, check_synth_marker
from vitreduce.errors import VitreduceError
from vitreduce.files import write_text
from vitreduce.study.slurm_job import SLURM_DIR
from vitreduce.study.spec import StudySpec, VariantSpec, parse_spec, spec_tree
from vitreduce.train import rundir
from vitreduce.train.config import ModelConfig, TrainConfig, changed_keys, validate

# The study directory: STUDY_DIR/study.yaml and STUDY_DIR/runs/<variant>/seed<S>/, each run with its
# lock file (held while it trains) and train.log (its output).
SPEC_FILE, RUNS, LOG = "study.yaml", "runs", "train.log"


@dataclass(frozen=True)
class RunPlan:
    """One run of a study: a variant at a seed, its directory and its validated config."""

    variant: str
    seed: int
    run_dir: Path
    tree: dict[str, Any]  # base, then the study's overrides, then the variant's, then the seed
    config: TrainConfig

    @property
    def label(self) -> str:
        return f"{self.variant}/seed{self.seed}"


def run_tree(spec: StudySpec, variant: VariantSpec, seed: int) -> dict[str, Any]:
    """The train-config tree of one run: base, the study's overrides, the variant's, then the seed."""
    tree = copy.deepcopy(spec.base)
    for overrides in (spec.overrides, variant.overrides):
        for key, value in overrides.items():
            _override(tree, key, copy.deepcopy(value))
    tree["seed"] = seed
    return tree


def _override(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted ``key``; a mapping merges into the section already there, as in a config file."""
    if isinstance(value, dict):
        current = _lookup(tree, key)
        if isinstance(current, dict):
            value = merge(current, value)
    set_key(tree, key, value, option="override")


def _lookup(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def study_dir_of(spec: StudySpec, out: str | os.PathLike | None = None) -> Path:
    return Path(out or spec.out or Path("runs") / "studies" / spec.name)


def expand(spec: StudySpec, study_dir: str | os.PathLike, timm: bool = True) -> list[RunPlan]:
    """Every run (variants in order, then seeds), each config validated; one error lists every bad variant.

    Args:
        timm: False leaves out the config checks that need timm and torch (``train.config.validate``).
    """
    plans, problems = [], []
    for variant in spec.variants:
        for seed in spec.seeds:
            try:
                tree = run_tree(spec, variant, seed)
                config = validate(tree, source=f"study {spec.name}, variant {variant.name!r}", timm=timm)
            except VitreduceError as err:
                problems.append(str(err))
                break  # the other seeds of this variant fail the same way
            plans.append(RunPlan(variant.name, seed, Path(study_dir) / RUNS / variant.name / f"seed{seed}",
                                 tree, config))
    if problems:
        raise VitreduceError("\n".join(problems))
    return plans


# ---------------------------------------------------------------------------------------------------
# Checks before any run starts


def preflight(spec: StudySpec, plans: list[RunPlan], data_here: bool = True, models: bool = True) -> list[str]:
    """Build every distinct model on the meta device and check every dataset root: all problems at once.

    With ``data_here`` False (a dry run, whose commands may run on another machine) a missing dataset root is
    returned as a note instead of refused. With ``models`` False (a dry run without torch) no model is built.
    """
    problems, data_problems = [], []

    def who(variants: list[str]) -> str:
        return "all variants" if len(variants) == len(spec.variants) > 1 else f"variant(s) {', '.join(variants)}"

    for model, variants in _distinct(plans, lambda p: p.config.model) if models else []:
        try:
            _check_model(model)
        except (ValueError, TypeError, AssertionError, RuntimeError) as err:  # VitreduceError is a ValueError
            problems.append(f"{who(variants)}: model {model.name} ({model.reduction}): {err}")
    for data, variants in _distinct(plans, lambda p: (p.config.data, p.config.synth)):
        root = Path(data[0].root).expanduser()
        if not root.is_dir() and (data[1] is None or not root.name.startswith(SYNTH_PREFIX)):
            made = f" (synth: generates the built-in dataset only into a folder named {SYNTH_PREFIX}*)" * bool(data[1])
            data_problems.append(f"{who(variants)}: data.root {data[0].root} is not a folder{made}; point it at "
                                 "your dataset with --set base.data.root=/path/to/data")
        elif root.is_dir() and data[1] is not None:
            try:
                check_synth_marker(root, data[1])  # here, before study.yaml is written, not when it is made
            except VitreduceError as err:
                problems.append(f"{who(variants)}: {err}")
    probe = spec.analysis.segmentation if spec.analysis is not None else None
    if probe is not None:
        try:
            probe.check_data()
        except VitreduceError as err:
            data_problems.append(f"the segmentation probe: {err}")
    if data_here:
        problems += data_problems
    if problems:
        raise VitreduceError(f"study {spec.name} cannot start:\n  " + "\n  ".join(problems))
    return [f"note (dry run; the commands need the data where they run): {p}" for p in data_problems]


def _distinct(plans: list[RunPlan], key) -> list[tuple[Any, list[str]]]:
    """The distinct values of ``key(plan)`` (pydantic models or tuples of them), each with its variants."""
    groups: dict[str, tuple[Any, list[str]]] = {}
    for plan in plans:
        value = key(plan)
        parts = value if isinstance(value, tuple) else (value,)
        ident = json.dumps([p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts],
                           sort_keys=True)
        variants = groups.setdefault(ident, (value, []))[1]
        if plan.variant not in variants:
            variants.append(plan.variant)
    return list(groups.values())


def _check_model(model: ModelConfig) -> None:
    """Build the model (and its reduction) on the meta device: shapes and reductions checked, no memory used."""
    if model.init_checkpoint is not None:
        from vitreduce.reduction.weights import split_selector

        if not split_selector(model.init_checkpoint)[0].is_file():  # FILE#state_dict_ema names FILE
            raise VitreduceError(f"model.init_checkpoint {model.init_checkpoint} does not exist")
        return
    from vitreduce.reduction.models import create_model
    from vitreduce.reduction.spec import ReductionSpec

    spec = ReductionSpec.parse(model.reduction).with_shapes_only()
    create_model(model.name, reduction=spec, device="meta", **model.timm_kwargs())


# ---------------------------------------------------------------------------------------------------
# Files written before any run starts


def prepare_study_dir(study_dir: Path, spec: StudySpec) -> list[str]:
    """Refuse a study directory made from a spec that changes any run; write study.yaml.

    Until a run has started (only a dry run's files: study.yaml and the runs' config.yaml, nothing submitted
    to SLURM), a changed spec replaces the old one, as a run directory that holds nothing takes a new config
    (``rundir.holds_nothing``): a spec corrected after a dry run, or after a refusal at the study's start,
    must not be locked out of its directory. Returns what the new spec changed (empty when nothing did)."""
    saved = study_dir / SPEC_FILE
    changed: list[str] = []
    if saved.is_file():
        try:
            old = parse_spec(read_yaml(saved), source=str(saved))
        except VitreduceError as err:
            raise VitreduceError(f"{saved} cannot be read back ({err}); use another --out") from None
        changed = spec_differences(old, spec)
        if changed and _has_started(study_dir):
            raise VitreduceError(f"{study_dir} holds a study made from a different spec; use another --out, or "
                                 "the same spec.\n  " + "\n  ".join(changed))
        for config in (study_dir / RUNS).glob(f"*/*/{rundir.CONFIG}") if changed else ():
            config.unlink()  # the old spec's, of runs that hold nothing: prepare_runs writes the new ones
    elif study_dir.is_dir() and any(study_dir.iterdir()):
        raise VitreduceError(f"{study_dir} is not empty and holds no {SPEC_FILE}; choose another --out")
    text = yaml.safe_dump(spec_tree(spec), sort_keys=False)
    if not saved.is_file() or saved.read_text() != text:
        write_text(saved, text)
    return changed


def _has_started(study_dir: Path) -> bool:
    """Whether any run of the study has made something (a checkpoint, metrics, done.json) or been submitted."""
    if (study_dir / SLURM_DIR).exists():
        return True
    return any(run_dir.is_dir() and not rundir.holds_nothing(run_dir)
               for run_dir in (study_dir / RUNS).glob("*/*"))


def spec_differences(old: StudySpec, new: StudySpec) -> list[str]:
    """What a new spec changes in a study: its name, baseline, runs added or removed, run configs changed."""
    lines = [f"{key}: {getattr(old, key)} -> {getattr(new, key)}" for key in ("name", "baseline", "nproc_per_node")
             if getattr(old, key) != getattr(new, key)]
    runs = [{(v.name, s): run_tree(spec, v, s) for v in spec.variants for s in spec.seeds} for spec in (old, new)]
    for what, a, b in (("runs removed", runs[0], runs[1]), ("runs added", runs[1], runs[0])):
        extra = [f"{v}/seed{s}" for v, s in a if (v, s) not in b]
        if extra:
            lines.append(f"{what}: {', '.join(extra)}")
    where: dict[str, list[str]] = {}
    common = [k for k in runs[1] if k in runs[0]]
    for v, s in common:
        for line in changed_keys(runs[0][v, s], runs[1][v, s]):
            if not line.startswith("seed:"):
                where.setdefault(line, []).append(f"{v}/seed{s}")
    for line, labels in where.items():
        lines.append(f"{line} ({'all runs' if len(labels) == len(common) else ', '.join(labels)})")
    return lines


def ensure_synth_data(plans: list[RunPlan]) -> None:
    """Generate each built-in dataset a study needs once, up front (parallel runs would race to make it)."""
    for (data, synth), _ in _distinct(plans, lambda p: (p.config.data, p.config.synth)):
        if synth is None:
            continue
        root = Path(data.root).expanduser()
        root.parent.mkdir(parents=True, exist_ok=True)
        with open(root.parent / f".{root.name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # a second study making the same dataset waits for the first
            with contextlib.redirect_stdout(sys.stderr):  # its "generating ..." line is progress, not a result
                ensure_synth(root, synth)


def prepare_runs(plans: list[RunPlan]) -> dict[str, rundir.RunStatus]:
    """Each run's status (new, resume, done), by label; config.yaml written for every unfinished one.

    A run directory made with another config is refused here, before any run starts (``rundir.inspect``).
    """
    starts = {p.label: rundir.inspect(p.run_dir, p.config).status for p in plans}
    for plan in plans:
        if starts[plan.label] != rundir.RunStatus.DONE:
            rundir.begin(plan.run_dir, plan.config)  # before the lock file: the engine wants config.yaml first
    return starts
