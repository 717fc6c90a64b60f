"""Compressing a trained model: the train config that reduces it, relaxes its sharing if asked, distils from it
and fine-tunes; and the teacher-versus-student comparison printed at the end (``vitreduce compress``).

Trained weights and the 1/sqrt(n) rule: grouped's ``scale=auto`` divides a shared MLP by sqrt(n) so that a
freshly initialised shared MLP starts with the variance of an unshared one. Trained weights have no such
variance to preserve; dividing them changes what every block computes. So the config written here sets
``scale=1.0`` on a grouped step explicitly, unless the spec names a scale itself.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vitreduce.errors import VitreduceError
from vitreduce.reduction import checkpoint
from vitreduce.reduction.accounting import describe
from vitreduce.reduction.spec import ReductionSpec, Step
from vitreduce.reduction.weights import split_selector
from vitreduce.train.config import TrainConfig
from vitreduce.train.distill import load_teacher
from vitreduce.train.model import start_model

TRAINED_SCALE = 1.0  # grouped's scale on trained weights (see the module's docstring)
DISTILL = {"soft": {"task": 0.5, "soft": 0.5, "hard": 0.0}, "hard": {"task": 0.5, "soft": 0.0, "hard": 0.5}}
_ARCHITECTURE = ("num_classes", "img_size", "patch_size", "embed_dim", "depth", "num_heads", "depths",
                 "window_size", "mlp_ratio")


def trained_spec(text: str, relax: int | None = None) -> ReductionSpec:
    """The spec as written, with grouped's scale set to TRAINED_SCALE unless ``text`` names one, and ``relax``
    (when given) as grouped's rank."""
    spec = ReductionSpec.parse(text)
    grouped = spec.step("grouped")
    if grouped is None:
        if relax:
            raise VitreduceError(f"--relax {relax} relaxes grouped sharing, but reduction {text!r} shares nothing; "
                                 "add a grouped step (e.g. grouped:init=mean)")
        return spec
    params = dict(grouped.params)
    if "scale=" not in text:
        params["scale"] = TRAINED_SCALE
    if relax is not None:
        params["relax"] = relax
    return ReductionSpec(tuple(Step("grouped", params) if s is grouped else s for s in spec.steps))


def teacher_architecture(teacher: str, base: str | None) -> dict[str, Any]:
    """The model section's name and architecture keys for ``teacher``: read from a vitreduce model file's header,
    or ``base`` with the architecture's own defaults for timm weights (set the rest with --set model.KEY=...)."""
    path, _ = split_selector(teacher)
    if not path.is_file():
        raise VitreduceError(f"teacher {teacher} does not exist")
    if not checkpoint.is_checkpoint(path):
        if not base:
            raise VitreduceError(f"teacher {teacher} holds plain weights, which do not say their architecture; name it "
                                 "with --model (e.g. --model vit_small_patch16_224), and its classes with "
                                 "--set model.num_classes=N")
        return {"name": base}
    metadata = checkpoint.read_metadata(path)
    if base and base != metadata["base_model"]:
        raise VitreduceError(f"teacher {teacher} is {metadata['base_model']}, not {base}; drop --model")
    kwargs = json.loads(metadata["model_kwargs"])  # read_metadata checked it: a JSON object
    unknown = sorted(set(kwargs) - set(_ARCHITECTURE) - {"drop_path_rate", "drop_rate", "weight_init"})
    if unknown:
        raise VitreduceError(f"teacher {teacher} is built with {', '.join(unknown)}, which a train config cannot set; "
                             "compress a model built from the config keys of docs/training.md")
    section = {key: _scalar(kwargs[key]) for key in _ARCHITECTURE if key in kwargs}
    return {"name": metadata["base_model"], **section}


def _scalar(value: Any) -> Any:
    """A square size written as [s, s] becomes s (the config's form)."""
    return value[0] if isinstance(value, list) and len(value) == 2 and value[0] == value[1] else value


def compress_tree(teacher: str, reduction: ReductionSpec, data_root: str, epochs: int, base: str | None = None,
                  distill: str = "soft", hidden: float = 0.0) -> dict[str, Any]:
    """The train config of ``vitreduce compress``: start from the teacher's weights, reduce them, distil from the
    teacher (``distill``: soft, hard or none; ``hidden``: the block-output term's weight), fine-tune."""
    model = {**teacher_architecture(teacher, base), "reduction": str(reduction), "init_checkpoint": teacher}
    tree: dict[str, Any] = {
        "epochs": epochs,
        "model": model,
        "data": {"root": data_root},
        "optimizer": {"lr": 5e-4},  # fine-tuning: below the from-scratch default
        "schedule": {"warmup_epochs": min(5, epochs // 10), "min_lr": 1e-6},
    }
    if distill != "none" or hidden:
        weights = DISTILL.get(distill, {"task": 1.0, "soft": 0.0, "hard": 0.0})
        tree["distill"] = {"teacher": teacher, **weights, "hidden": hidden}
    return tree


def preflight(config: TrainConfig, run_dir: Path, config_file: Path) -> None:
    """Everything that can refuse the job, before anything is written: the dataset, the teacher (as
    init_checkpoint and as teacher), the run directory (another config's run is refused), and a config file
    already there with other content (it would be overwritten)."""
    from vitreduce.data import check_dataset
    from vitreduce.train import rundir
    from vitreduce.train.config import dump
    from vitreduce.train.distill import check_teacher
    from vitreduce.train.model import check_init_checkpoint, check_same_classes

    check_dataset(config.data, config.model.num_classes)
    check_init_checkpoint(config.model)
    teacher = split_selector(config.model.init_checkpoint)[0]
    if checkpoint.is_checkpoint(teacher):  # the student keeps the teacher's head: the same classes, in order
        check_same_classes(teacher, config.data, "the teacher")
    check_teacher(config)
    rundir.inspect(run_dir, config)
    if config_file.exists() and (not config_file.is_file() or config_file.read_text() != dump(config)):
        raise VitreduceError(f"{config_file} exists with another config; name another file with --config, or "
                             "remove it to write this one")


def accuracy(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> float:
    """Top-1 (percent) of ``model`` on the config's val split, as a run evaluates."""
    from vitreduce.data import build_eval_loader
    from vitreduce.train.evaluate import evaluate

    loader = build_eval_loader(config.data, config.augment, tuple(model.patch_embed.img_size))
    return evaluate(model.to(device), loader, config.precision, device).top1


def before_training(config: TrainConfig, device: torch.device) -> dict[str, dict[str, Any]]:
    """The teacher and the reduced student before any training (zero-shot): params, MACs, val top-1."""
    teacher = load_teacher(config.model_copy(update={"distill": config.distill.model_copy(
        update={"teacher": config.model.init_checkpoint})}), device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        student, _ = start_model(config.model, device)
    return {"teacher": _row(teacher, config, device), "zero-shot": _row(student, config, device)}


def _row(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> dict[str, Any]:
    d = describe(model)
    return {"reduction": d.reduction, "params": d.params, "macs_total": d.macs_total,
            "top1": accuracy(model, config, device)}


def teacher_cost(run_dir: Path) -> str | None:
    """A line on the teacher's cost in the run's last epoch (its metrics.jsonl), or None without distillation."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    last = json.loads(lines[-1]) if lines else {}
    if "img_s_without_teacher" not in last:
        return None
    return (f"distillation cost, last epoch: {last['img_s']:.1f} img/s with the teacher, "
            f"{last['img_s_without_teacher']:.1f} without ({last['teacher_s']:.1f} s in its forward)")


def comparison_rows(before: dict[str, dict[str, Any]], run_dir: Path, final: dict[str, Any]) -> list[dict[str, Any]]:
    """Teacher, zero-shot student and the trained student (raw and EMA weights), one dict each."""
    record = json.loads((run_dir / "run.json").read_text())
    student = {"reduction": record["reduction"], "params": record["params"], "macs_total": record["macs_total"]}
    rows = [{"model": "teacher", **before["teacher"]}, {"model": "student, zero-shot", **before["zero-shot"]}]
    for kind in ("raw", "ema"):
        if final.get(kind):
            rows.append({"model": f"student, trained ({kind})", **student, "top1": final[kind]["top1"]})
    return rows
