"""The built-in dataset: deterministic, ImageFolder-readable, learnable only from spatial structure."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vitreduce.cli.main import main
from vitreduce.data import synth
from vitreduce.errors import VitreduceError

SMALL = dict(classes=3, train_per_class=4, val_per_class=2, size=16)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _nearest_centroid_accuracy(train, train_labels, val, val_labels) -> float:
    """Standardise features on train, assign each val row to the closest class mean."""
    mu, sd = train.mean(0), train.std(0) + 1e-8
    train, val = (train - mu) / sd, (val - mu) / sd
    centroids = np.stack([train[train_labels == c].mean(0) for c in np.unique(train_labels)])
    pred = ((val[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    return float((pred == val_labels).mean())


def _mean_colour(images):
    return images.reshape(len(images), -1, 3).mean(1)  # (N, 3)


def _fourier_magnitudes(images):
    # Magnitudes of the grey image's spectrum: blind to colour, polarity and position, not to structure.
    grey = images.astype(np.float64).mean(-1)
    grey -= grey.mean((1, 2), keepdims=True)
    mag = np.abs(np.fft.fft2(grey))
    mag /= mag.sum((1, 2), keepdims=True) + 1e-8
    return np.log(mag + 1e-4).reshape(len(images), -1)  # (N, S*S)


@pytest.fixture(scope="module")
def splits():
    train = synth.generate(150, seed=0, split="train")
    val = synth.generate(50, seed=0, split="val")
    return train, val


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = _files(synth.write_synth_dataset(tmp_path / "a", seed=3, **SMALL))
    b = _files(synth.write_synth_dataset(tmp_path / "b", seed=3, **SMALL))
    c = _files(synth.write_synth_dataset(tmp_path / "c", seed=4, **SMALL))
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.endswith(".png"))


def test_files_match_in_memory_images(tmp_path):
    out = synth.write_synth_dataset(tmp_path / "d", seed=1, **SMALL)
    images, labels = synth.generate(2, seed=1, classes=3, size=16, split="val")
    names = synth.class_names(3)
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        on_disk = np.asarray(Image.open(out / "val" / names[label] / f"{i % 2:05d}.png"))
        np.testing.assert_array_equal(on_disk, img)
    assert images.shape == (6, 16, 16, 3) and images.dtype == np.uint8
    marker = json.loads((out / synth.MARKER).read_text())
    assert marker["seed"] == 1 and marker["classes"] == names and marker["train_per_class"] == 4


def test_train_and_val_differ():
    train, _ = synth.generate(3, seed=0, classes=2, split="train")
    val, _ = synth.generate(3, seed=0, classes=2, split="val")
    assert not np.array_equal(train, val)


def test_layout_reads_as_timm_imagefolder(tmp_path):
    from timm.data import create_dataset

    out = synth.write_synth_dataset(tmp_path / "d", seed=0, **SMALL)
    train = create_dataset("", root=str(out), split="train")
    val = create_dataset("", root=str(out), split="validation")  # timm looks for val/ too
    assert len(train) == 3 * 4 and len(val) == 3 * 2
    assert sorted({label for _, label in train}) == [0, 1, 2]
    img, _ = train[0]
    assert img.size == (16, 16) and img.mode == "RGB"


def test_mean_colour_says_nothing_about_the_class(splits):
    (x, y), (xv, yv) = splits
    accuracy = _nearest_centroid_accuracy(_mean_colour(x), y, _mean_colour(xv), yv)
    assert accuracy < 2 * 0.1, accuracy


def test_spatial_structure_is_learnable(splits):
    (x, y), (xv, yv) = splits
    accuracy = _nearest_centroid_accuracy(_fourier_magnitudes(x), y, _fourier_magnitudes(xv), yv)
    assert accuracy > 2.5 * 0.1, accuracy


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        (dict(classes=1), "--classes"),
        (dict(classes=len(synth.FAMILIES) + 1), "--classes"),
        (dict(size=7), "--size"),
        (dict(train_per_class=0), "--train-per-class"),
        (dict(val_per_class=0), "--val-per-class"),
        (dict(seed=-1), "--seed"),
    ],
)
def test_bad_arguments_write_nothing(tmp_path, kwargs, flag):
    with pytest.raises(VitreduceError, match=flag):
        synth.write_synth_dataset(tmp_path / "d", **{**SMALL, **kwargs})
    assert list(tmp_path.iterdir()) == []


def test_crash_leaves_no_dataset(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth.Image.Image, "save", boom)
    with pytest.raises(RuntimeError):
        synth.write_synth_dataset(tmp_path / "d", **SMALL)
    assert list(tmp_path.iterdir()) == []  # neither OUT nor the temporary directory


def test_overwrite_replaces_only_its_own_files(tmp_path):
    out = synth.write_synth_dataset(tmp_path / "d", seed=0, **SMALL)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(VitreduceError, match="--overwrite"):
        synth.write_synth_dataset(out, seed=1, **SMALL)
    synth.write_synth_dataset(out, seed=1, overwrite=True, **{**SMALL, "classes": 2})
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / synth.MARKER).read_text())["seed"] == 1
    assert sorted(p.name for p in (out / "train").iterdir()) == synth.class_names(2)
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temporary directories left behind


def test_overwrite_refuses_foreign_files(tmp_path):
    foreign = tmp_path / "foreign"
    (foreign / "train").mkdir(parents=True)
    (foreign / "train" / "x.jpg").write_bytes(b"not ours")
    with pytest.raises(VitreduceError, match="not written by"):
        synth.write_synth_dataset(foreign, overwrite=True, **SMALL)
    out = synth.write_synth_dataset(tmp_path / "d", **SMALL)
    stray = out / "train" / synth.class_names(3)[0] / "extra.jpg"
    stray.write_bytes(b"user file")
    with pytest.raises(VitreduceError, match="extra.jpg"):
        synth.write_synth_dataset(out, overwrite=True, **SMALL)
    assert stray.read_bytes() == b"user file" and (foreign / "train" / "x.jpg").exists()


def test_cli_writes_then_refuses_non_empty_out(tmp_path, capsys):
    out = tmp_path / "d"
    args = ["data", "synth", str(out), "--classes", "2", "--train-per-class", "3", "--val-per-class", "1",
            "--size", "8", "--seed", "5"]
    assert main(args) == 0
    line = capsys.readouterr().out.strip()
    assert "6 train + 2 val images" in line and str(out) in line
    before = _files(out)
    assert main([*args[:-1], "6"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _files(out) == before


def test_cli_bad_argument_exits_2(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "d"), "--classes", "1"]) == 2
    assert "--classes" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_parallel_writers_of_one_dataset_agree(tmp_path):
    # Two runs of a study may both generate the same data.root; the second rename finds it full.
    out = synth.write_synth_dataset(tmp_path / "d", **SMALL)
    twin = synth.write_synth_dataset(tmp_path / "twin", **SMALL)
    synth._rename_into(twin, out, (twin / synth.MARKER).read_text())
    other = synth.write_synth_dataset(tmp_path / "other", seed=9, **SMALL)
    with pytest.raises(VitreduceError, match="filled by something else"):
        synth._rename_into(other, out, (other / synth.MARKER).read_text())
