"""The segmentation probe of a study's finished runs: the `analysis.segmentation:` section of a spec.

For each finished run it probes the final model (``analysis.weights``: EMA or raw) on the named dataset
with ``vitreduce.probe`` and the section's recipe, seeded with the run's seed, into
``RUN/analysis/segmentation/`` (probe.json, probe_state.pt, results.json: the files of ``vitreduce probe
segmentation``). A finished probe with the same settings is reused; one with other settings (the
section changed) is replaced; a killed one resumes exactly. The report reads results.json
(``report.analysis_files.read_run_probe``); nothing here is needed to read it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vitreduce.config_tree import read_yaml
from vitreduce.data.synth import SYNTH_PREFIX
from vitreduce.errors import VitreduceError
from vitreduce.report.analysis_files import SEGMENTATION, read_run_probe


class SegmentationSynth(BaseModel):
    """``analysis.segmentation.synth:``: generate the built-in scenes at ``data`` when it is missing (only into
    a folder whose name starts with ``synth``, so that a mistyped path never probes on made-up images)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, ge=0)
    classes: int = Field(5, ge=2, le=7)
    train_images: int = Field(200, ge=1)
    val_images: int = Field(50, ge=1)
    size: int = Field(32, ge=8)


class SegmentationProbeConfig(BaseModel):
    """``analysis.segmentation:``: the dataset and the probe's recipe (``vitreduce.probe.ProbeOptions``; the
    defaults are the documented recipe, docs/dense-tasks.md)."""

    model_config = ConfigDict(extra="forbid")

    data: str  # a segmentation dataset in the ADE20K layout (relative paths: to the working directory)
    blocks: list[int] = Field(default_factory=lambda: [-1], min_length=1)
    head: Literal["linear", "decoder"] = "linear"
    finetune: bool = False
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    decoder_width: int = Field(128, ge=1)
    classes: int | None = None
    reduce_zero_label: bool | None = None
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # the backbone's forward
    synth: SegmentationSynth | None = None

    def options(self, seed: int):
        """The probe options for a run of this seed."""
        from vitreduce.probe import ProbeOptions

        fields = self.model_dump(exclude={"data", "blocks", "synth"})
        return ProbeOptions(blocks=tuple(self.blocks), seed=seed, **fields)

    def check_data(self) -> None:
        """Refuse a missing or malformed dataset before any run trains (the probe's own checks); a missing one
        that ``synth`` will generate passes."""
        from vitreduce.data.segmentation import dataset_classes, scan_pairs

        root = Path(self.data).expanduser()
        if not root.exists() and self.synth is not None and root.name.startswith(SYNTH_PREFIX):
            return
        if not root.is_dir():
            made = f" (synth: generates the built-in scenes only into a folder named {SYNTH_PREFIX}*)"
            raise VitreduceError(f"analysis.segmentation.data {root} is not a folder{made * bool(self.synth)}; point "
                                 "it at a segmentation dataset in the ADE20K layout (`vitreduce data synth DIR "
                                 "--segmentation` writes one)")
        dataset_classes(root, self.classes, self.reduce_zero_label)
        for split in ("training", "validation"):
            scan_pairs(root, split)


def probe_run(run_dir: Path, config: SegmentationProbeConfig, model_file: Path, log=print) -> bool:
    """Probe one finished run's model file; False when a finished probe with these settings was reused."""
    from vitreduce.probe import run_segmentation_probe

    _ensure_data(config)
    out = run_dir.joinpath(*SEGMENTATION)
    seed = read_yaml(run_dir / "config.yaml").get("seed", 0)
    options = config.options(int(seed))
    before = read_run_probe(run_dir)
    result = run_segmentation_probe(model_file, config.data, out, options, progress="none", restart=True)
    if before == result:
        return False
    log(f"segmentation probe of {run_dir}: mIoU {result['miou']:.2f}, pixel accuracy {result['pixel_accuracy']:.2f}")
    return True


def _ensure_data(config: SegmentationProbeConfig) -> None:
    root = Path(config.data).expanduser()
    config.check_data()
    if not root.exists():
        from vitreduce.data.segmentation_synth import write_segmentation_dataset

        write_segmentation_dataset(root, **config.synth.model_dump())
