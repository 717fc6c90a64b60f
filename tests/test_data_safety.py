"""Hostile data folders: high-bit-depth pixels read right or refused, links that cannot loop or relabel,
FIFOs never opened, and user text in the report shown as text (vitreduce.data.images, report.render)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

import vitreduce
from vitreduce.data import AugmentConfig, DataConfig, build_eval_loader, build_train_loader, check_dataset
from vitreduce.data.images import read_rgb, scan_split
from vitreduce.errors import VitreduceError
from vitreduce.report.render import Bullets, Heading, Paragraph, Table, render_html, render_markdown
from vitreduce.sharpness.batches import load_batches
from vitreduce.study.reporting import write_report

SIZE = 8  # images are written at the model's input size, so the eval transform only scales to [0, 1]
PLAIN = AugmentConfig(enabled=False, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_pct=1.0)
FIXTURE_STUDY = Path(__file__).parent / "fixtures" / "v0_1" / "study" / "out"
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")


def _pixels(seed: int) -> np.ndarray:
    """(SIZE, SIZE) uint8, black to white: an all-white or all-black reading cannot pass for it."""
    values = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    values.flat[:2] = (0, 255)
    return values


def _write_high_bit(path: Path, eight: np.ndarray, mode: str) -> Path:
    """``eight`` stored as ``mode`` pixels that mean the same gray levels."""
    wide = eight.astype(np.int64) * 257  # 16-bit white is 65535 = 255 * 257
    if mode == "I;16":
        image = Image.fromarray(wide.astype(np.uint16))
    elif mode == "I;16B":
        image = Image.frombytes("I;16B", (SIZE, SIZE), wide.astype(">u2").tobytes())
    elif mode == "I":
        image = Image.fromarray(wide.astype(np.int32))
    else:
        image = Image.fromarray((eight / 255).astype(np.float32))
    image.save(path)
    assert Image.open(path).mode == mode  # the mode reaches the reader as written
    return path


def _high_bit_twins(root: Path) -> tuple[Path, Path]:
    """Two datasets with the same gray levels: one in 16-bit, 32-bit integer and float files, one in 8-bit PNGs."""
    wide, eight = root / "wide", root / "eight"
    files = [("I;16", ".png"), ("I;16B", ".tif"), ("I", ".tif"), ("F", ".tif")]
    seed = 0
    for split in ("train", "val"):
        for label in ("a", "b"):
            for i, (mode, suffix) in enumerate(files):
                seed += 1
                values = _pixels(seed)
                for folder in (wide, eight):
                    (folder / split / label).mkdir(parents=True, exist_ok=True)
                _write_high_bit(wide / split / label / f"img{i}{suffix}", values, mode)
                Image.fromarray(values).save(eight / split / label / f"img{i}.png")
    return wide, eight


def _write_gray(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(_pixels(i)).save(folder / name)


def _two_class_vit() -> torch.nn.Module:
    return vitreduce.create_model("vit_tiny_patch16_224", img_size=SIZE, patch_size=4, embed_dim=8, depth=1,
                                  num_heads=2, num_classes=2)


def _data(root: Path, **kwargs) -> DataConfig:
    return DataConfig(**{"root": str(root), "batch_size": 2, "workers": 0, **kwargs})


# --- pixel modes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode,suffix", [("I;16", ".png"), ("I;16B", ".tif"), ("I", ".tif"), ("F", ".tif")])
def test_high_bit_depth_gray_is_scaled_to_8_bits_not_clipped(tmp_path, mode, suffix):
    eight = _pixels(3)
    image, problem = read_rgb(str(_write_high_bit(tmp_path / f"x{suffix}", eight, mode)))
    assert problem == "" and image.mode == "RGB"
    assert np.array_equal(np.asarray(image), np.repeat(eight[..., None], 3, axis=2))


def test_16_bit_values_round_to_the_nearest_8_bit_level(tmp_path):
    wide = np.array([[0, 128, 129, 257], [32767, 32768, 65407, 65535]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "x.png")
    image, _ = read_rgb(str(tmp_path / "x.png"))
    assert np.asarray(image)[..., 0].tolist() == [[0, 0, 1, 1], [127, 128, 255, 255]]  # round(v / 257)


def test_8_bit_modes_read_as_pillow_converts_them(tmp_path):
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8), "RGBA")
    palette = rgba.convert("RGB").quantize(16)
    palette.info["transparency"] = 3
    images = {"1.png": rgba.convert("1"), "L.png": rgba.convert("L"), "LA.png": rgba.convert("LA"),
              "P.png": palette, "RGB.png": rgba.convert("RGB"), "RGBA.png": rgba, "CMYK.tif": rgba.convert("CMYK"),
              "YCbCr.tif": rgba.convert("RGB").convert("YCbCr"), "RGB.jpg": rgba.convert("RGB")}
    for name, image in images.items():
        image.save(tmp_path / name)
        with Image.open(tmp_path / name) as opened:
            expected = np.asarray(opened.convert("RGB"))
        read, problem = read_rgb(str(tmp_path / name))
        assert problem == "" and np.array_equal(np.asarray(read), expected), name


@pytest.mark.parametrize("pixels,mode,why", [
    (np.full((4, 4), 70000, np.int32), "I", "mode I with values 70000..70000, outside 0..65535"),
    (np.full((4, 4), -1, np.int32), "I", "mode I with values -1..-1"),
    (np.full((4, 4), 1.5, np.float32), "F", "mode F with values outside"),
    (np.full((4, 4), np.nan, np.float32), "F", "mode F with values outside"),
    (np.zeros((4, 4, 3), np.uint8), "LAB", "mode LAB is not supported"),
])
def test_pixels_without_an_8_bit_meaning_are_refused_naming_file_and_mode(tmp_path, pixels, mode, why):
    path = tmp_path / "x.tif"
    Image.fromarray(pixels, "LAB" if mode == "LAB" else None).save(path)
    image, problem = read_rgb(str(path))
    assert image is None and problem.startswith(f"{path} (") and why in problem


def test_training_evaluation_and_sharpness_read_a_16_bit_dataset_as_its_8_bit_twin(tmp_path):
    wide, eight = _high_bit_twins(tmp_path)
    for split in ("train", "val"):
        loaded = {}
        for name, root in (("wide", wide), ("eight", eight)):
            evaluation = build_eval_loader(_data(root), PLAIN, SIZE, split=split)
            train = build_train_loader(_data(root, train_split=split), PLAIN, SIZE, 2, seed=0)
            loaded[name] = (torch.cat([b[0] for b in evaluation]), torch.cat([b.images for b in train]))
            assert not evaluation.bad_paths and not train.bad_paths
        assert all(torch.equal(a, b) for a, b in zip(loaded["wide"], loaded["eight"], strict=True))
        assert 0 < loaded["wide"][0].mean() < 1  # neither all white nor all black
    model = _two_class_vit()
    batches = {name: load_batches(model, root, batches=2, batch_size=4) for name, root in (("w", wide), ("e", eight))}
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(*batches.values(), strict=True))


def test_refused_images_are_reported_with_their_mode_and_counted(tmp_path):
    _write_gray(tmp_path / "train" / "a", ["ok0.png", "ok1.png", "ok2.png"])
    _write_gray(tmp_path / "train" / "b", ["ok0.png", "ok1.png"])
    Image.fromarray(np.full((SIZE, SIZE), 2.0, np.float32)).save(tmp_path / "train" / "b" / "hdr.tif")
    evaluation = build_eval_loader(_data(tmp_path, max_bad_fraction=0.5), PLAIN, SIZE, split="train")
    assert sum(len(b[1]) for b in evaluation) == 5
    assert evaluation.bad_paths == [f"{tmp_path}/train/b/hdr.tif (mode F with values outside [0, 1]: save it as "
                                    "8- or 16-bit, or scale it to [0, 1])"]
    strict = build_eval_loader(_data(tmp_path, max_bad_fraction=0.1), PLAIN, SIZE, split="train")
    with pytest.raises(VitreduceError, match=r"1 of 6 images .*hdr\.tif \(mode F"):
        list(strict)
    model = _two_class_vit()
    with pytest.raises(VitreduceError, match=r"hdr\.tif \(mode F.*: an image of the fixed subset cannot be read"):
        load_batches(model, tmp_path, batches=1, batch_size=6)


# --- what a scan counts -----------------------------------------------------------------------------


def test_a_tree_without_links_is_scanned_as_torchvision_scans_it(tmp_path):
    split = tmp_path / "train"
    _write_gray(split / "b", ["z.png", "A.PNG", "m.jpg"])
    (split / "b" / "notes.txt").write_text("not an image")
    _write_gray(split / "a" / "sub", ["2.png", "1.png"])
    _write_gray(split / "a" / "sub-x", ["0.png"])  # '-' sorts before '/': torchvision's walk order
    _write_gray(split / "a" / "sub" / "deeper", ["9.png"])
    _write_gray(split / "a", ["top.png"])
    classes, class_to_idx = find_classes(str(split))
    assert scan_split(split, tmp_path) == (classes, make_dataset(str(split), class_to_idx, IMG_EXTENSIONS))


def _linked_tree(root: Path, outside: Path) -> int:
    """train/{a,b}, val/{a,b} and a pool/ of 2 + 3 + 1 real images, with loops and links that lead away."""
    _write_gray(root / "train" / "a", ["0.png", "1.png"])
    _write_gray(root / "train" / "b", ["0.png", "1.png", "2.png"])
    _write_gray(root / "val" / "a", ["0.png"])
    _write_gray(root / "val" / "b", ["0.png"])
    _write_gray(root / "pool", ["p.png"])
    _write_gray(outside, ["far.png"])
    links = {
        "train/a/loop": "../a",  # back into its own folder
        "train/a/up": "..",  # the split folder
        "train/b/root": "../..",  # the dataset root: val images under this label
        "train/b/val_a": "../../val/a",  # another split's class
        "train/b/other": "../a",  # another class of the same split
        "train/c": "../val",  # a class folder outside the split
        "train/a/dup.png": "0.png",  # a file already counted
        "train/a/cross.png": "../b/0.png",  # another class's file: it stays in its own class
        "train/a/far.png": str(outside / "far.png"),  # a file outside the dataset root
        "train/a/broken.png": "missing.png",
        "train/b/pool.png": "../../pool/p.png",  # a file inside the root, not in the split: counted once
        "train/b/pool2.png": "../../pool/p.png",
    }
    for name, target in links.items():
        os.symlink(target, root / name)
    return 2 + 3 + 1


def test_links_never_loop_relabel_or_leave_the_dataset_root(tmp_path):
    root = tmp_path / "data"
    real_files = _linked_tree(root, tmp_path / "elsewhere")
    with pytest.warns(UserWarning, match=r"skipped 11 entries") as warned:
        classes, samples = scan_split(root / "train", root)
    assert classes == ["a", "b"] and len(samples) == real_files
    assert sorted((os.path.relpath(os.path.realpath(path), root), classes[target]) for path, target in samples) == [
        ("pool/p.png", "b"), ("train/a/0.png", "a"), ("train/a/1.png", "a"),
        ("train/b/0.png", "b"), ("train/b/1.png", "b"), ("train/b/2.png", "b")]
    message = str(warned[0].message)
    assert "train/a/loop (a link to a folder, not followed below a class folder)" in message
    assert f"train/c (a link to the folder {root.resolve()}/val, not inside" in message
    with pytest.warns(UserWarning):
        assert check_dataset(_data(root), 2) == 2
        loader = build_train_loader(_data(root), PLAIN, SIZE, 2, seed=0)
    assert loader.samples_per_epoch == real_files
    assert sum(len(b.targets) for b in loader) == real_files // 2 * 2 and not loader.bad_paths


def test_a_file_link_outside_the_root_is_skipped_even_when_the_root_is_a_link(tmp_path):
    _write_gray(tmp_path / "real" / "train" / "a", ["0.png"])
    _write_gray(tmp_path / "far", ["x.png"])
    os.symlink(tmp_path / "far" / "x.png", tmp_path / "real" / "train" / "a" / "x.png")
    os.symlink(tmp_path / "real", tmp_path / "alias")
    with pytest.warns(UserWarning, match="outside the dataset root"):
        _, samples = scan_split(tmp_path / "alias" / "train", tmp_path / "alias")
    assert samples == [(f"{tmp_path}/alias/train/a/0.png", 0)]


def test_a_class_made_empty_by_the_rules_is_refused_naming_it(tmp_path):
    _write_gray(tmp_path / "train" / "cat", ["0.png"])
    os.symlink("cat", tmp_path / "train" / "kitty")  # a second label for the same images
    with pytest.warns(UserWarning, match="kitty/0.png"), pytest.raises(
            VitreduceError, match=r"no image file in the class folders kitty"):
        scan_split(tmp_path / "train", tmp_path)


@needs_fifo
def test_a_fifo_named_like_an_image_is_never_opened(tmp_path):
    for split in ("train", "val"):
        _write_gray(tmp_path / split / "a", ["0.png", "1.png"])
        _write_gray(tmp_path / split / "b", ["0.png", "1.png"])
        os.mkfifo(tmp_path / split / "a" / "x.png")  # reading it would block until a writer comes: a hang
        os.symlink("../a/x.png", tmp_path / split / "b" / "y.png")
    fifo = tmp_path / "train" / "a" / "x.png"
    with pytest.warns(UserWarning, match=r"a/x\.png \(a FIFO, not a regular file\)"):
        assert check_dataset(_data(tmp_path), 2) == 2
    with pytest.warns(UserWarning, match=r"b/y\.png \(a link to a FIFO"):
        train = build_train_loader(_data(tmp_path), PLAIN, SIZE, 2, seed=0)
        evaluation = build_eval_loader(_data(tmp_path), PLAIN, SIZE)
    assert str(fifo) not in [path for path, _ in train.dataset.samples]
    assert sum(len(b.targets) for b in train) == 4 and sum(len(b[1]) for b in evaluation) == 4
    assert read_rgb(str(fifo)) == (None, f"{fifo} (a FIFO, not a regular file)")  # stat first, never open
    model = _two_class_vit()
    with pytest.warns(UserWarning):
        assert len(load_batches(model, tmp_path, batches=1, batch_size=4)) == 1


# --- user text in the report ------------------------------------------------------------------------


def test_markdown_shows_markup_in_names_as_text_and_leaves_ordinary_text_alone():
    hostile = "<script>alert(1)</script> &amp; [x](javascript:alert(1)) <https://e.org>"
    md = render_markdown([Heading(hostile), Paragraph(hostile), Bullets([hostile]), Table(["v"], [[hostile + "\n|"]])])
    assert "<script" not in md and "</script" not in md and "<https" not in md and "](" not in md
    assert "&lt;script>alert(1)&lt;/script> &amp;amp; [x]\\(javascript:alert(1)) &lt;https://e.org>" in md
    assert "| &lt;script>alert(1)&lt;/script> &amp;amp; [x]\\(javascript:alert(1)) &lt;https://e.org> \\| |" in md
    ordinary = "p < 0.05, a & b, 1 ± 2, seed 0: [3, 5] (baseline) 2 -> 3"
    assert render_markdown([Paragraph(ordinary), Table(["a|b"], [["x"]])]) == f"{ordinary}\n\n| a\\|b |\n|---|\n| x |\n"
    assert "<script" not in render_html([Paragraph(hostile)], title=hostile)


def test_report_md_and_html_escape_hand_edited_names(tmp_path):
    study = tmp_path / "out"
    shutil.copytree(FIXTURE_STUDY, study, symlinks=True)
    variant = "<img src=x onerror=alert(1)>"
    (study / "runs" / "grouped").rename(study / "runs" / variant)
    spec = yaml.safe_load((study / "study.yaml").read_text())
    spec["name"] = "<script>alert(1)</script>"
    spec["variants"] = [{**v, "name": variant} if v["name"] == "grouped" else v for v in spec["variants"]]
    (study / "study.yaml").write_text(yaml.safe_dump(spec))
    paths = write_report(study, n_resamples=20)
    md, page = paths.markdown.read_text(), paths.html.read_text()
    assert "<script" not in md and "<img src=x" not in md and "<script" not in page and "<img src=x" not in page
    assert "# Study report: &lt;script>alert(1)&lt;/script>" in md and "| &lt;img src=x onerror=alert(1)> |" in md
    assert "Study report: &lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
