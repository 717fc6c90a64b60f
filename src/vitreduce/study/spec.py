"""Study specs: the typed spec, and reading one (files, ``extends``, ``--set``) with one error naming every bad key.

A study spec (YAML, docs/studies.md) names a base train config, overrides for every run, the variants
(each a set of overrides, usually ``model.reduction``) and the seeds. vitreduce.study.plan turns a spec
into one validated run per variant x seed and checks them; vitreduce.study.runner runs them.
"""
from __future__ import annotations

import difflib
import functools
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from vitreduce.config_tree import (
    SEED_MAX,
    Whole,
    explain_error,
    merge,
    parse_assignment,
    read_yaml,
    section_keys,
    set_key,
)
from vitreduce.device import Precision
from vitreduce.errors import VitreduceError
from vitreduce.statistics.settings import PROBE_MIOU, StatisticsConfig
from vitreduce.study.analysis import AnalysisConfig
from vitreduce.study.sweep import DEFAULT_MAX_RUNS, SweepSpec, check_size, expand_sweep
from vitreduce.train.config import TrainConfig

Launcher = Literal["python", "torchrun", "slurm"]  # slurm: one SLURM job per run (study.slurm)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# A chain of `extends` longer than this is a mistake (and Python's recursion would end it as a traceback).
MAX_EXTENDS_DEPTH = 32
# Counts far above any real study (processes per run; throughput batch, repeats and warm-up runs).
_COUNT_MAX = 1 << 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError("must be a folder name: letters, digits, '_', '-', '.' (not starting with '.')")
    return value


def _check_overrides(value: dict[str, Any] | None) -> dict[str, Any]:
    value = {} if value is None else value
    if not isinstance(value, dict):
        raise ValueError("must be a mapping of dotted train-config keys to values, e.g. {model.reduction: grouped}")
    for key in value:
        if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
            raise ValueError(f"override key {key!r} must be a dotted train-config key, e.g. model.reduction")
        if key == "seed":
            raise ValueError("'seed' is set per run from the study's seeds; remove it from the overrides")
    return value


# A study and each of its variants have a name (a directory) and train-config overrides.
FolderName = Annotated[str, AfterValidator(_check_name)]
Overrides = Annotated[dict[str, Any], BeforeValidator(_check_overrides)]


class VariantSpec(_Strict):
    """One variant: a name (its directory under runs/) and the train-config keys it changes."""

    name: FolderName  # any folder name: summary.json keeps the variants apart from the study's results
    overrides: Overrides = {}


def _check_device(value: str) -> str:
    """A device name's form, checked with the spec: a bad one would otherwise stop the study after training."""
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", value):
        raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {value!r}")
    return value


class ThroughputOptions(_Strict):
    """The ``throughput:`` section: how the variants' inference throughput is measured into throughput.json
    once every run has finished (vitreduce.efficiency.profiler.write_throughput_json).

    The defaults are profile_variants' keyword defaults, except ``mode`` and ``memory``: a study's
    throughput.json is inference throughput, measured without the peak-memory subprocesses.
    """

    device: Annotated[str, AfterValidator(_check_device)] = "cpu"  # cpu, cuda or cuda:N
    precision: Precision = "fp32"  # fp32, or bf16 / fp16 through autocast
    batch_size: Whole = Field(32, ge=1, le=_COUNT_MAX)  # images per timed batch
    mode: Literal["infer", "both"] = "infer"  # both: training steps are timed too
    compile: bool = False  # torch.compile each model (compiled during the warm-up, not timed)
    repeats: Whole = Field(5, ge=1, le=_COUNT_MAX)  # timed runs per variant (median, min and max are recorded)
    warmup: Whole = Field(2, ge=0, le=_COUNT_MAX)  # untimed runs per variant before timing
    memory: bool = False  # also measure peak memory, in one fresh process per variant


def _throughput_form(value: Any) -> str:
    return "options" if isinstance(value, dict | ThroughputOptions) else "switch"


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LIST = r"[A-Za-z0-9_.+-]+(,[A-Za-z0-9_.+-]+)*"
# slurm.<key> -> the characters SLURM's names take (partition, account, qos: a name or a comma list).
_SLURM_VALUES = {
    "partition": (re.compile(_LIST), "partition name (letters, digits, '_', '-', '.', several separated by ',')"),
    "account": (re.compile(_LIST), "account name (letters, digits, '_', '-', '.')"),
    "qos": (re.compile(_LIST), "QOS name (letters, digits, '_', '-', '.', several separated by ',')"),
    "constraint": (re.compile(r"[A-Za-z0-9_.+\-&|,\[\]*():!]+"),
                   "constraint (node features joined by '&', '|', ',', with [ ] and *N; no spaces or quotes)"),
}
_OPTION = re.compile(r"[A-Za-z][A-Za-z0-9]*([_-][A-Za-z0-9]+)*")
# sbatch options the job script takes from other keys (slurm.additional may not set them).
_OWN_OPTIONS = {**{key: f"slurm.{key}" for key in ("nodes", "partition", "account", "qos", "constraint")},
                "time": "slurm.timeout_min", "mem": "slurm.mem_gb", "gpus_per_node": "slurm.gpus_per_node",
                "ntasks_per_node": "slurm.gpus_per_node", "cpus_per_task": "slurm.cpus_per_task",
                "signal": "slurm.signal_delay_s", "array": "one job per run", "job_name": "the study's name",
                "output": "STUDY_DIR/slurm/", "error": "STUDY_DIR/slurm/", "open_mode": "logs are appended to",
                "requeue": "jobs are requeued", "no_requeue": "jobs are requeued"}


class SlurmOptions(_Strict):
    """The ``slurm:`` section: the SLURM job of each run when ``launcher: slurm`` (vitreduce.study.slurm,
    through submitit). The defaults fit the paper's runs: one node, 2 GPUs, one task (DDP rank) per GPU.
    Changing them between submissions is allowed; the number of processes (nodes x GPUs) must stay the
    same for a run to resume."""

    nodes: Whole = Field(1, ge=1, le=_COUNT_MAX)  # > 1: one run over several nodes (shared study directory)
    gpus_per_node: Whole = Field(2, ge=0, le=_COUNT_MAX)  # also tasks per node; 0: one CPU task per node
    cpus_per_task: Whole = Field(8, ge=1, le=_COUNT_MAX)  # data-loader workers + 1, or more
    mem_gb: Whole = Field(80, ge=1, le=_COUNT_MAX)  # per node
    timeout_min: Whole = Field(2880, ge=1, le=_COUNT_MAX)  # the job's time limit; a run longer than it is requeued
    signal_delay_s: Whole = Field(120, ge=1, le=_COUNT_MAX)  # USR2 this long before the limit: stop, requeue
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    additional: dict[str, Any] = {}  # other sbatch options, e.g. {exclusive: true, mail_type: END}
    setup: list[str] = []  # shell lines run before the job's tasks (module load, source a venv)
    max_requeues: Whole = Field(10, ge=0, le=_COUNT_MAX)  # a run requeued more often than this fails
    array_parallelism: Whole = Field(256, ge=1, le=_COUNT_MAX)  # jobs of the array running at once

    # Every value reaches the job script: names in SLURM's character set, no control character (a newline
    # would end an #SBATCH line and start a shell line; sbatch ignores every #SBATCH line after it).
    @field_validator("partition", "account", "qos", "constraint")
    @classmethod
    def _names(cls, value: str | None, info) -> str | None:
        pattern, what = _SLURM_VALUES[info.field_name]
        if value is not None and not pattern.fullmatch(value):
            raise ValueError(f"{value!r} is not a SLURM {what}")
        return value

    @field_validator("additional")
    @classmethod
    def _additional(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, item in value.items():
            if not _OPTION.fullmatch(str(key)):
                raise ValueError(f"{key!r} is not an sbatch option name (letters, digits, '_' or '-', e.g. mail_type)")
            if str(key).replace("-", "_") in _OWN_OPTIONS:
                raise ValueError(f"{key!r} is set by vitreduce ({_OWN_OPTIONS[str(key).replace('-', '_')]})")
            if not isinstance(item, str | int | float | bool) or _CONTROL.search(str(item)):
                raise ValueError(f"{key}: {item!r} must be one line of text, a number or true")
        return value

    @field_validator("setup")
    @classmethod
    def _setup(cls, value: list[str]) -> list[str]:
        for line in value:
            if _CONTROL.search(line):
                raise ValueError(f"{line!r}: each setup entry is one shell line (no newline or control character)")
        return value

    @model_validator(mode="after")
    def _signal_before_limit(self) -> SlurmOptions:
        if self.signal_delay_s >= self.timeout_min * 60:
            raise ValueError(f"slurm.signal_delay_s {self.signal_delay_s} is not shorter than the time limit "
                             f"(slurm.timeout_min {self.timeout_min} = {self.timeout_min * 60} s): the stop signal "
                             "must come before the limit; lower signal_delay_s or raise timeout_min")
        return self


# `throughput: true` profiles with the default options; a mapping sets some of them.
Throughput = Annotated[Annotated[bool, Tag("switch")] | Annotated[ThroughputOptions, Tag("options")],
                       Discriminator(_throughput_form)]


class StudySpec(_Strict):
    """A study: base train config + overrides, variants x seeds, and how to run them."""

    name: FolderName
    base: dict[str, Any]  # the base train config tree (paths are read into a tree by load_spec)
    overrides: Overrides = {}  # dotted train-config key -> value, for every run
    variants: list[VariantSpec] = []  # at least one here or from `sweep`
    sweep: SweepSpec | None = None  # base models x reduction grids, expanded into variants (study.sweep)
    seeds: list[Annotated[Whole, Field(ge=0, le=SEED_MAX)]] = Field([42], min_length=1)  # numpy's 32-bit seeds
    baseline: str | None = None  # a variant name; default the first
    throughput: Throughput = False  # true, or ThroughputOptions
    analysis: AnalysisConfig | None = None  # sharpness/landscape of final/peak checkpoints (study.analysis)
    statistics: StatisticsConfig | None = None  # the report's statistics settings (statistics.family)
    launcher: Launcher = "python"
    slurm: SlurmOptions = SlurmOptions()  # the jobs of launcher: slurm
    nproc_per_node: Whole = Field(1, ge=1, le=_COUNT_MAX)  # processes per run under torchrun
    out: str | None = None  # default runs/studies/<name>
    max_runs: Whole = Field(DEFAULT_MAX_RUNS, ge=1)  # a larger study is refused until the spec raises this

    @field_serializer("throughput")
    def _dump_throughput(self, value: bool | ThroughputOptions) -> bool | dict[str, Any]:
        # study.yaml records the options the spec gave, not every default.
        return value.model_dump(exclude_unset=True) if isinstance(value, ThroughputOptions) else value

    @field_serializer("statistics")
    def _dump_statistics(self, value: StatisticsConfig | None) -> dict[str, Any] | None:
        return None if value is None else value.model_dump(exclude_unset=True)  # the keys the spec gave

    @property
    def profiling(self) -> ThroughputOptions | None:
        """How to measure throughput.json; None when the study does not (``false``, or an empty mapping)."""
        if isinstance(self.throughput, ThroughputOptions):
            return self.throughput if self.throughput.model_fields_set else None  # `{}` has always meant off
        return ThroughputOptions() if self.throughput else None

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if any(s < 0 for s in value) or len(set(value)) != len(value):
            raise ValueError(f"must be distinct non-negative integers, got {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> StudySpec:
        check_size(len(self.variants), self.sweep, len(self.seeds), self.max_runs)  # before expanding the sweep
        self.variants = [*self.variants, *_swept(self)]
        if not self.variants:
            raise ValueError("variants: give at least one variant, or a sweep: section")
        names = [v.name for v in self.variants]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"variants: names must be unique, repeated: {', '.join(repeated)}")
        if self.baseline is None:
            self.baseline = names[0]
        elif self.baseline not in names:
            close = difflib.get_close_matches(self.baseline, names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"baseline: {self.baseline!r} is not a variant; {hint}variants: {', '.join(names)}")
        if self.nproc_per_node > 1 and self.launcher == "python":
            raise ValueError("nproc_per_node > 1 needs launcher: torchrun (or slurm)")
        probed = self.analysis is not None and self.analysis.segmentation is not None
        if self.statistics is not None and self.statistics.primary == PROBE_MIOU and not probed:
            raise ValueError(f"statistics.primary {PROBE_MIOU} is the segmentation probe's mIoU, but the spec has no "
                             "analysis.segmentation section: add one (analysis: {segmentation: {data: DIR}}, a dataset "
                             "in the ADE20K layout; docs/dense-tasks.md), or name another primary metric")
        if self.launcher == "slurm" and self.nproc_per_node not in (1, self.slurm.gpus_per_node):
            raise ValueError(f"nproc_per_node {self.nproc_per_node} and slurm.gpus_per_node {self.slurm.gpus_per_node} "
                             "disagree: on SLURM a run has slurm.gpus_per_node processes per node; set "
                             f"--slurm-gpus-per-node {self.nproc_per_node}, or nproc_per_node=1 to let slurm: decide")
        return self


def _swept(spec: StudySpec) -> list[VariantSpec]:
    """The sweep's variants not already listed (study.yaml lists them all, and keeps the sweep that made them)."""
    listed = {v.name: v.overrides for v in spec.variants}
    extra = []
    for variant in expand_sweep(spec.sweep) if spec.sweep else []:
        if variant.name not in listed:
            extra.append(VariantSpec(name=variant.name, overrides=variant.overrides))
        elif listed[variant.name] != variant.overrides:
            raise ValueError(f"variants: {variant.name!r} is also a variant of the sweep, with other overrides; "
                             "rename it or drop it from the sweep")
    return extra


def load_spec(path: str | os.PathLike, sets: list[str] | tuple[str, ...] = ()) -> StudySpec:
    """Read a study spec file, apply ``--set`` items, validate.

    Args:
        path: the spec YAML. ``base`` (a path or list of paths, relative to the file, or a mapping) is
            read into a tree; ``extends: other.yaml`` (or a list, relative paths) starts from other spec
            files, merged key by key in order, then this file's keys.
        sets: ``key=value`` items (value parsed as YAML): ``base.K=V`` edits the base config,
            ``overrides.K=V`` adds a train-config override for every run, ``seeds=[0,1]`` etc. set spec keys.
    """
    tree = _read_tree(Path(path), ())
    for item in sets:
        _apply_set(tree, item)
    spec = parse_spec(tree, source=str(path))
    for item in sets:
        key = item.partition("=")[0].strip()
        if key.startswith("base."):
            _check_not_shadowed(spec, item, key.removeprefix("base."))
    return spec


def _check_not_shadowed(spec: StudySpec, item: str, key: str) -> None:
    """Refuse a ``--set base.K=V`` that an override would silently undo."""
    def hits(overrides: dict[str, Any]) -> list[str]:
        return [k for k in overrides if k == key or key.startswith(k + ".") or k.startswith(key + ".")]

    where = hits(spec.overrides)
    if not where and all(hits(v.overrides) for v in spec.variants):
        where = sorted({k for v in spec.variants for k in hits(v.overrides)})
    if where:
        raise VitreduceError(f"--set {item!r} would have no effect: the spec overrides {', '.join(where)} for "
                             f"every run; use --set overrides.{item.removeprefix('base.')} instead")


def parse_spec(tree: dict[str, Any], source: str = "study spec") -> StudySpec:
    """Validate a spec tree whose ``base`` is a mapping; one VitreduceError naming every bad key."""
    try:
        return StudySpec.model_validate(tree)
    except ValidationError as err:
        problems = [_describe(e) for e in err.errors()]
        raise VitreduceError(f"invalid study spec ({source}):\n  " + "\n  ".join(problems)) from None


def _read_tree(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """A spec file as a tree: ``base`` paths read and merged, ``extends`` parents merged under it."""
    path = path.resolve()
    if path in seen:
        raise VitreduceError(f"{path}: 'extends' goes round in a circle ({' -> '.join(map(str, seen))})")
    if len(seen) > MAX_EXTENDS_DEPTH:
        raise VitreduceError(f"{path}: 'extends' chains more than {MAX_EXTENDS_DEPTH} spec files; shorten the chain")
    tree = read_yaml(path)
    base = tree.get("base")
    if isinstance(base, str | list):
        files = [base] if isinstance(base, str) else base
        if not files or not all(isinstance(f, str) for f in files):
            raise VitreduceError(f"{path}: base must be a path, a list of paths, or a mapping")
        tree["base"] = {}
        for name in files:
            tree["base"] = merge(tree["base"], read_yaml(path.parent / name))
    elif base is not None and not isinstance(base, dict):
        raise VitreduceError(f"{path}: base must be a train config path (relative to the spec), a list of "
                             f"paths, or a mapping; got {base!r}")
    parents = tree.pop("extends", None)
    if parents is not None:
        parents = [parents] if isinstance(parents, str) else parents
        if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
            raise VitreduceError(f"{path}: extends must be a study spec path (relative to this file) or a list")
        inherited: dict[str, Any] = {}
        for parent in parents:
            inherited = merge(inherited, _read_tree(path.parent / parent, (*seen, path)))
        if "variants" in tree and "baseline" not in tree:
            inherited.pop("baseline", None)  # new variants: the inherited baseline may be gone; default to the first
        tree = merge(inherited, tree)
    return tree


def _apply_set(tree: dict[str, Any], item: str) -> None:
    """One ``--set KEY=VALUE``: a spec key, or ``overrides.K`` (kept flat, as in a spec file)."""
    key, value = parse_assignment(item)
    head, _, rest = key.partition(".")
    if head == "overrides" and rest:
        overrides = tree.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise VitreduceError(f"--set {item!r}: overrides is {overrides!r}, not a mapping of train-config keys")
        tree["overrides"] = {**overrides, rest: value}
        return
    if head == "variants":
        raise VitreduceError(f"--set {item!r}: variants cannot be set from the command line; edit the spec")
    if head in TrainConfig.model_fields and head not in StudySpec.model_fields:
        raise VitreduceError(f"--set {item!r}: {head} is a train-config key; use --set overrides.{key}=...")
    set_key(tree, key, value, item)


def _describe(error: dict[str, Any]) -> str:
    if not error["loc"]:  # the spec-wide checks (_consistent) name their keys themselves
        return error["msg"].removeprefix("Value error, ")
    loc = [str(part) for part in error["loc"]]
    if loc[0] == "throughput":
        del loc[1:2]  # the union tag: 'switch' or 'options'
    unknown = "unknown profile option" if loc[0] == "throughput" else "unknown key"
    # The spec's own checks put the value in their message where it helps; pydantic's get it appended.
    keys = functools.partial(section_keys, StudySpec)
    return explain_error(error, keys, loc=loc, show_input=error["type"] != "value_error", unknown=unknown)


def spec_tree(spec: StudySpec) -> dict[str, Any]:
    """The resolved spec as written to study.yaml (``statistics`` only when the spec has one)."""
    return spec.model_dump(mode="json", exclude={"statistics"} if spec.statistics is None else None)
