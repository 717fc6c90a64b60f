"""The segmentation probe and its data: exact synthetic masks in the ADE20K layout, refused bad data
before any work, known-answer metrics, a probe clearly above chance, and a killed probe that resumes exactly."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitreduce
from vitreduce.cli.main import main
from vitreduce.data.scenes import render_scenes
from vitreduce.data.segmentation import scan_pairs
from vitreduce.data.segmentation_synth import write_segmentation_dataset
from vitreduce.probe import ProbeOptions, run_segmentation_probe
from vitreduce.probe.metrics import confusion, scores

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory) -> Path:
    """Built-in scenes, 3 classes (background, horizontal and vertical stripes), 32x32 px. Read only."""
    return write_segmentation_dataset(tmp_path_factory.mktemp("seg") / "synth-seg", classes=3, train_images=96,
                                      val_images=32, size=32)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    """A randomly initialised 2-block grouped ViT on 32x32 images (8x8 patches of 4 px), as a model file."""
    torch.manual_seed(0)
    model = vitreduce.create_model("vit_tiny_patch16_224", "grouped", img_size=32, patch_size=4, embed_dim=32,
                                   depth=2, num_heads=2, num_classes=3)
    return vitreduce.save(model, tmp_path_factory.mktemp("model") / "model.safetensors")


def test_scene_masks_are_exact():
    """Without noise, every pixel labelled background has the image's one background colour, and every
    object pixel shows its object's texture: never that colour in an image whose objects cover it."""
    images, masks = render_scenes(np.random.default_rng(3), 16, 32, 5, noise=0.0)
    for image, mask in zip(images, masks, strict=True):
        background = image[mask == 0]
        assert len(background) and (background == background[0]).all()
        assert mask.max() >= 1 and set(np.unique(mask)) <= set(range(5))
    assert set(np.unique(masks)) == set(range(5))  # every class occurs


def test_segmentation_dataset_layout_and_bytes(tmp_path, seg_data):
    again = write_segmentation_dataset(tmp_path / "again", classes=3, train_images=96, val_images=32, size=32)
    files = sorted(p.relative_to(seg_data) for p in seg_data.rglob("*.png"))
    assert len(files) == 2 * (96 + 32) and Path("annotations/validation/00031.png") in files
    assert all((seg_data / f).read_bytes() == (again / f).read_bytes() for f in files)  # same seed, same bytes
    mask = Image.open(seg_data / "annotations/training/00000.png")
    assert mask.mode == "L" and mask.size == (32, 32)
    marker = json.loads((seg_data / "vitreduce_synth.json").read_text())
    assert marker["classes"] == ["background", "stripes_h", "stripes_v"]


def _copy(src: Path, dst: Path) -> Path:
    for path in src.rglob("*"):
        if path.is_file():
            (dst / path.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (dst / path.relative_to(src)).write_bytes(path.read_bytes())
    return dst


def test_bad_data_is_refused_before_any_work(tmp_path, seg_data, backbone, capsys):
    data = _copy(seg_data, tmp_path / "data")
    Image.new("L", (16, 32)).save(data / "annotations/validation/00003.png")
    with pytest.raises(vitreduce.VitreduceError, match=r"00003.png is 16x32, its image .* 32x32"):
        scan_pairs(data, "validation")
    code = main(["probe", "segmentation", str(backbone), "--data", str(data), "--out", str(tmp_path / "out")])
    assert code == 2 and "masks differ in size" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written
    (data / "annotations/validation/00003.png").unlink()
    with pytest.raises(vitreduce.VitreduceError, match="have no mask"):
        scan_pairs(data, "validation")
    Image.new("L", (32, 32), color=7).save(data / "annotations/validation/00003.png")
    with pytest.raises(vitreduce.VitreduceError, match="has label 7, but 3 classes"):
        run_segmentation_probe(backbone, data, tmp_path / "out2", ProbeOptions(epochs=1), device="cpu",
                               progress="none")


def test_metrics_known_answer():
    target = torch.tensor([[0, 0, 1, 1, 255, 2]])
    pred = torch.tensor([[0, 1, 1, 1, 0, 0]])
    m = confusion(pred, target, 4, 255)
    assert m.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    s = scores(m, ["a", "b", "c", "d"])
    # IoU: a 1/(2+2-1) = 1/3, b 2/(2+3-2) = 2/3, c 0, d absent (not scored); pixels: 5 scored, 3 right.
    assert s["miou"] == pytest.approx(100 / 3, abs=1e-3) and s["pixel_accuracy"] == 60.0
    assert s["per_class"][3] == {"class": "d", "iou": None, "accuracy": None, "pixels": 0}


def test_probe_is_clearly_above_chance(tmp_path, seg_data, backbone):
    """The tiny ViT (random init), fine-tuned with the small decoder head for 15 epochs on 96 scenes, reaches
    66 to 75 mIoU (seeds 0, 1, 2 measured on one machine) where predicting the commonest class everywhere
    scores 24.7. The test asks for more than twice that and 20 points more (49.3): at least 16 points below
    anything measured, a gap no rounding difference between machines can close (it moves the result by far
    less than a point), while a probe that learned nothing, or scored the wrong split or classes, fails it.
    (Frozen, a randomly initialised backbone's tokens carry no texture information a linear head could
    use: that probe stays near the constant's score, as it should.)"""
    options = ProbeOptions(finetune=True, backbone_lr_scale=1.0, head="decoder", decoder_width=32, blocks=(0, 1),
                           epochs=15, batch_size=8, lr=3e-3)
    result = run_segmentation_probe(backbone, seg_data, tmp_path / "probe", options, device="cpu", progress="none")
    chance = result["constant_miou"]
    assert 15 < chance < 35
    assert result["miou"] > max(2 * chance, chance + 20), result["miou"]
    assert result["pixel_accuracy"] > 80
    ious = [c["iou"] for c in result["per_class"]]
    assert all(iou is not None and iou > 30 for iou in ious)  # each class found, not only the background


def test_killed_probe_resumes_exactly(tmp_path, seg_data, backbone, python_one_thread):
    whole = run_segmentation_probe(backbone, seg_data, tmp_path / "whole", ProbeOptions(epochs=4, batch_size=8),
                                   device="cpu", progress="none")
    out = tmp_path / "killed"
    done = python_one_thread(HERE / "probe_killer.py", "epoch:2", backbone, seg_data, out, 4)
    assert done.returncode == -9 and not (out / "results.json").exists()
    assert torch.load(out / "probe_state.pt", weights_only=True)["epoch"] == 2
    resumed = run_segmentation_probe(backbone, seg_data, out, ProbeOptions(epochs=4, batch_size=8), device="cpu",
                                     progress="none")
    for result in (whole, resumed):
        result.pop("seconds_this_session")
    assert resumed == whole  # losses, confusion matrix, every score
    a, b = (torch.load(d / "probe_state.pt", weights_only=True)["head"] for d in (tmp_path / "whole", out))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_probe_command_prints_one_line(tmp_path, seg_data, backbone, capsys):
    out = tmp_path / "probe"
    args = ["probe", "segmentation", str(backbone), "--data", str(seg_data), "--out", str(out), "--epochs", "1",
            "--progress", "none"]
    assert main(args) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "mIoU" in line and str(out / "results.json") in line
    from_cli = json.loads((out / "results.json").read_text())
    assert from_cli["options"]["epochs"] == 1
    # The command loads with 2 worker processes; in this process, the same batches give the same results.
    here = run_segmentation_probe(backbone, seg_data, tmp_path / "here", ProbeOptions(epochs=1), device="cpu",
                                  progress="none", workers=0)
    assert {k: v for k, v in here.items() if k != "seconds_this_session"} == {
        k: v for k, v in from_cli.items() if k != "seconds_this_session"}
    assert main([*args[:-4], "--epochs", "2"]) == 2
    assert "other settings (options.epochs: 1 -> 2)" in capsys.readouterr().err
    assert main([*args, "--blocks", "x"]) == 2


@pytest.mark.parametrize(("base", "kwargs"), [
    ("swin_tiny_patch4_window7_224", dict(img_size=32, window_size=2, embed_dim=16, depths=[2, 2], num_heads=[1, 2])),
    ("eva02_small_patch14_224", dict(img_size=28, patch_size=7, depth=2, embed_dim=32, num_heads=2)),
])
def test_probe_runs_on_every_family(tmp_path, seg_data, base, kwargs):
    """Swin's stages (two resolutions, resized to the finer one) and EVA's blocks feed the head alike;
    images of another size than the model's (EVA's 28 px) are resized, and every pixel of each 32x32 mask
    file is scored."""
    torch.manual_seed(0)
    path = vitreduce.save(vitreduce.create_model(base, "grouped", num_classes=3, **kwargs), tmp_path / "m.safetensors")
    result = run_segmentation_probe(path, seg_data, tmp_path / "probe", ProbeOptions(epochs=1, blocks=(0, 1)),
                                    device="cpu", progress="none")
    assert result["input_size"] == [kwargs["img_size"]] * 2 and result["pixels"] == 32 * 32 * 32


def test_links_outside_the_root_and_special_files_are_skipped(tmp_path, seg_data):
    """Classification's file rules: a link leading out of the dataset and a FIFO named like an image are
    never read; each is named in one warning, and the pairs are the regular files."""
    import os

    data = _copy(seg_data, tmp_path / "data")
    outside = tmp_path / "secret.png"
    Image.new("RGB", (32, 32)).save(outside)
    (data / "images/validation/99998.png").symlink_to(outside)
    os.mkfifo(data / "images/validation/99999.png")
    with pytest.warns(UserWarning, match=r"skipped 2 entries.*outside the dataset root.*FIFO"):
        pairs = scan_pairs(data, "validation")
    assert len(pairs) == 32 and all("9999" not in image for image, _ in pairs)


def test_bf16_backbone_forward_and_refused_settings(tmp_path, seg_data, backbone):
    result = run_segmentation_probe(backbone, seg_data, tmp_path / "bf16", ProbeOptions(epochs=1, precision="bf16"),
                                    device="cpu", progress="none", workers=0)
    assert result["options"]["precision"] == "bf16" and result["pixels"] == 32 * 32 * 32
    with pytest.raises(vitreduce.VitreduceError, match="--precision: use fp32 or bf16 with --finetune"):
        ProbeOptions(finetune=True, precision="fp16")
    with pytest.raises(vitreduce.VitreduceError, match="--blocks"):
        ProbeOptions(blocks=(1, 1))
