"""Tar shard sets: deterministic writing, the folder's exact batches, seeking resume, bad samples and shards."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitreduce.cli.main import main
from vitreduce.data import (
    AugmentConfig,
    DataConfig,
    build_eval_loader,
    build_train_loader,
    check_dataset,
    data_format,
    write_shards,
)
from vitreduce.data import shards as shards_module
from vitreduce.data.shards import ShardSamples
from vitreduce.errors import VitreduceError

AUG = AugmentConfig(repeated_aug=1, mixup=0.8, cutmix=1.0, reprob=0.25)  # every RNG of the pipeline in use


def _quiet(line: str) -> None:
    pass


@pytest.fixture(scope="module")
def shard_set(tiny_dataset, tmp_path_factory) -> Path:
    """``tiny_dataset`` (32 train, 16 val images) as shards of 10 samples: 4 train shards, the last partial."""
    return write_shards(tiny_dataset, tmp_path_factory.mktemp("shards") / "set", shard_size=10, progress=_quiet)


def _data(root: Path, **kwargs) -> DataConfig:
    return DataConfig(**{"root": str(root), "batch_size": 8, "workers": 0, **kwargs})


def _batches(data: DataConfig, epoch: int, start_batch: int = 0, **rank) -> list:
    loader = build_train_loader(data, AUG, 16, 4, seed=5, **rank)
    loader.set_epoch(epoch, start_batch)
    return list(loader)


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        x.index == y.index and torch.equal(x.images, y.images) and torch.equal(x.targets, y.targets)
        for x, y in zip(a, b, strict=True))


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_same_images_give_the_same_bytes(tiny_dataset, shard_set, tmp_path):
    source = tmp_path / "copy"
    shutil.copytree(tiny_dataset, source)  # new times, inodes and owner: none of them may reach the bytes
    again = write_shards(source, tmp_path / "again", shard_size=10, progress=_quiet)
    assert _tree_bytes(again) == _tree_bytes(shard_set)
    with tarfile.open(shard_set / "train-000000.tar") as tar:  # readable by any tar reader, WebDataset's names
        assert tar.getnames()[:2] == ["000000000.png", "000000000.cls"]
        # nothing from the writer's clock, user or umask
        fields = {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in tar.getmembers()}
    assert fields == {(0, 0, 0, "", "", 0o644)}


def test_a_run_reads_the_folders_batches_from_its_shards(tiny_dataset, shard_set):
    assert data_format(_data(shard_set)) == "shards" and data_format(_data(tiny_dataset)) == "folder"
    for epoch in (0, 1):
        assert _same(_batches(_data(shard_set), epoch), _batches(_data(tiny_dataset), epoch))
    folder = build_eval_loader(_data(tiny_dataset), AUG, 16)
    shards = build_eval_loader(_data(shard_set, format="shards"), AUG, 16)
    assert shards.dataset.classes == folder.dataset.classes
    for a, b in zip(folder, shards, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_workers_do_not_change_the_batches(shard_set):
    assert _same(_batches(_data(shard_set, workers=2), 1), _batches(_data(shard_set), 1))


def test_a_resumed_epoch_seeks_without_reading_consumed_samples(shard_set, monkeypatch):
    read = []
    original = ShardSamples.read
    monkeypatch.setattr(ShardSamples, "read", lambda self, index: read.append(index) or original(self, index))
    whole = _batches(_data(shard_set), 2)
    order = list(read)
    read.clear()
    resumed = _batches(_data(shard_set), 2, start_batch=3)
    assert _same(resumed, whole[3:])
    assert read == order[3 * 8:]  # only the samples of the batches still to come, each read once


def test_two_ranks_cover_an_epoch_exactly_once(shard_set, monkeypatch):
    read = []
    original = ShardSamples.read
    monkeypatch.setattr(ShardSamples, "read", lambda self, index: read.append(index) or original(self, index))
    per_rank = []
    for rank in (0, 1):
        read.clear()
        assert len(_batches(_data(shard_set), 1, rank=rank, world_size=2)) == 2
        per_rank.append(list(read))
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == list(range(32))


def _corrupt_copy(shard_set: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy of the set with sample 3's image bytes overwritten by garbage; returns it and the sample's name."""
    copy = tmp_path / "set"
    shutil.copytree(shard_set, copy)
    row = (copy / "train-index.tsv").read_text().splitlines()[4].split("\t")  # header, then samples 0..
    offset, size = int(row[3]), int(row[4])
    with open(copy / row[0], "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\0garbage" * (size // 8))
    return copy, f"{row[0]}:{row[1]}"


def test_a_corrupt_sample_is_dropped_counted_and_named(shard_set, tmp_path):
    copy, name = _corrupt_copy(shard_set, tmp_path)
    loader = build_train_loader(_data(copy, max_bad_fraction=0.1), AUG, 16, 4, seed=5)
    batches = list(loader)
    assert loader.bad_paths == [name] and sum(len(b.bad_paths) for b in batches) == 1
    assert sum(len(b.targets) for b in batches) < 32  # dropped, never replaced
    with pytest.raises(VitreduceError, match=f"1 of 32 images.*{name}"):
        list(build_train_loader(_data(copy, max_bad_fraction=0.0), AUG, 16, 4, seed=5))


def test_a_truncated_shard_is_refused_before_work_and_reported_while_reading(shard_set, tmp_path):
    copy = tmp_path / "set"
    shutil.copytree(shard_set, copy)
    shard = copy / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[:9000])  # samples 10..12 survive, the rest of the shard is gone
    with pytest.raises(VitreduceError, match=r"train-000001.tar \(truncated: 9000 bytes"):
        check_dataset(_data(copy), 4)
    loader = build_eval_loader(_data(copy, max_bad_fraction=0.9), AUG, 16, split="train")
    seen = sum(len(targets) for _, targets, _ in loader)
    assert seen == 32 - 7 and len(loader.bad_paths) == 7
    assert all("train-000001.tar:0000000" in p and "truncated" in p for p in loader.bad_paths)


def test_an_oversized_sample_is_never_read(shard_set, monkeypatch):
    monkeypatch.setattr(shards_module, "MAX_SAMPLE_BYTES", 800)
    asked = []
    pread = shards_module.os.pread
    monkeypatch.setattr(shards_module.os, "pread", lambda fd, size, at: asked.append(size) or pread(fd, size, at))
    loader = build_eval_loader(_data(shard_set, max_bad_fraction=0.99), AUG, 16)
    sizes = loader.dataset.index.size
    kept = torch.cat([indices for _, _, indices in loader]).tolist()
    assert kept == [i for i in range(16) if sizes[i] <= 800] and 0 < len(kept) < 16
    assert len(loader.bad_paths) == 16 - len(kept) and "over the limit of 800 bytes" in loader.bad_paths[0]
    assert len(asked) == len(kept) and max(asked) <= 800


def test_shard_sets_are_checked_before_any_work(shard_set, tiny_dataset, tmp_path, capsys):
    assert check_dataset(_data(shard_set), 4) == 4
    assert "reading its tar shards" in capsys.readouterr().out  # auto-detected, and said so
    with pytest.raises(VitreduceError, match="has 4 classes, the model 5"):
        check_dataset(_data(shard_set), 5)
    with pytest.raises(VitreduceError, match="no split 'valid'.*data.val_split"):
        check_dataset(_data(shard_set, val_split="valid"), 4)
    with pytest.raises(VitreduceError, match="data.format is shards but"):
        check_dataset(_data(tiny_dataset, format="shards"), 4)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(shard_set / "train-000000.tar", bare)
    with pytest.raises(VitreduceError, match="vitreduce data index"):
        check_dataset(_data(bare), 4)


def test_a_damaged_index_is_refused(shard_set, tmp_path):
    copy = tmp_path / "set"
    shutil.copytree(shard_set, copy)
    lines = (copy / "train-index.tsv").read_text().splitlines()
    (copy / "train-index.tsv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(VitreduceError, match="samples per shard"):
        build_eval_loader(_data(copy), AUG, 16, split="train")


def _webdataset_shard(path: Path, keys: list[str], classes: list[int]) -> None:
    """A shard as other WebDataset writers make them: folders in keys, a .json member, JPEG images."""
    with tarfile.open(path, "w") as tar:
        for key, target in zip(keys, classes, strict=True):
            image = io.BytesIO()
            Image.fromarray(np.full((20, 20, 3), 40 * target, np.uint8)).save(image, format="JPEG")
            for ext, data in (("json", b"{}"), ("jpg", image.getvalue()), ("cls", f"{target}\n".encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_existing_webdataset_shards_are_indexed_and_read(tmp_path, capsys):
    root = tmp_path / "wds"
    root.mkdir()
    for part in range(2):
        keys = [f"n0{part}/img_{i}" for i in range(8)]
        _webdataset_shard(root / f"imagenet-train-{part:04d}.tar", keys, [i % 2 for i in range(8)])
    _webdataset_shard(root / "imagenet-validation-0000.tar", [f"v{i}" for i in range(4)], [0, 1, 0, 1])
    (tmp_path / "classes.txt").write_text("tench\ngoldfish\n")
    assert main(["data", "index", str(root), "--split", "train=imagenet-train-*.tar",
                 "--split", "val=imagenet-validation-*.tar", "--classes", str(tmp_path / "classes.txt")]) == 0
    assert check_dataset(_data(root), 2) == 2
    loader = build_eval_loader(_data(root, eval_batch_size=16), AUG, 16, split="train")
    (_, targets, indices), = list(loader)
    assert targets.tolist() == [i % 2 for i in range(8)] * 2 and indices.tolist() == list(range(16))
    assert loader.dataset.name(9) == "imagenet-train-0001.tar:n01/img_1"
    marker = json.loads((root / "vitreduce_shards.json").read_text())
    assert marker["classes"] == ["tench", "goldfish"] and marker["splits"]["val"]["samples"] == 4


def test_data_shard_and_synth_shards_commands(tiny_dataset, tmp_path, capsys):
    assert main(["data", "shard", str(tiny_dataset), str(tmp_path / "out"), "--shard-size", "16"]) == 0
    assert "train: wrote train-000001.tar (2/2 shards, 32/32 samples)" in capsys.readouterr().out
    assert main(["data", "shard", str(tiny_dataset), str(tmp_path / "out")]) == 2  # never over a filled folder
    assert "not an empty folder" in capsys.readouterr().err
    assert main(["data", "synth", str(tmp_path / "synth"), "--shards", "--classes", "4", "--train-per-class", "8",
                 "--val-per-class", "4", "--size", "16", "--seed", "0"]) == 0
    # The same images as the folder fixture (seed 0), so the same shard bytes as converting it
    write_shards(tiny_dataset, tmp_path / "converted", progress=_quiet)
    assert _tree_bytes(tmp_path / "synth") == _tree_bytes(tmp_path / "converted")


def test_webdataset_reads_the_shards_as_the_same_samples(shard_set):
    import webdataset

    urls = [str(shard_set / f"train-{n:06d}.tar") for n in range(4)]
    stream = webdataset.WebDataset(urls, shardshuffle=False, empty_check=False).to_tuple("__key__", "png", "cls")
    ours = ShardSamples(shard_set, "train", transform=None)
    found = [(key, image, int(cls)) for key, image, cls in stream]
    assert [key for key, _, _ in found] == ours.index.keys
    assert [target for _, _, target in found] == ours.index.targets.tolist()
    assert all(image == ours.read(i)[0] for i, (_, image, _) in enumerate(found))


def test_eval_and_the_sharpness_batches_read_shards_as_the_folder(tiny_dataset, shard_set, tmp_path, capsys):
    from conftest import tiny_model

    from vitreduce import save
    from vitreduce.sharpness.batches import load_batches

    model = tiny_model(num_classes=4)
    folder = load_batches(model, tiny_dataset, batches=2, batch_size=4, seed=1)
    shards = load_batches(model, shard_set, batches=2, batch_size=4, seed=1)
    assert all(torch.equal(a, b) for pair in zip(folder, shards, strict=True) for a, b in zip(*pair, strict=True))
    save(model, tmp_path / "model.safetensors")
    results = []
    for root in (tiny_dataset, shard_set):
        assert main(["eval", str(tmp_path / "model.safetensors"), "--data", str(root), "--workers", "0",
                     "--device", "cpu", "--json"]) == 0
        results.append({k: v for k, v in json.loads(capsys.readouterr().out).items() if k not in ("data", "classes")})
    assert results[0] == results[1] and results[0]["images"] == 16
    assert main(["eval", str(tmp_path / "model.safetensors"), "--data", str(shard_set), "--split", "test"]) == 2
    assert "no split 'test' (it has train, val)" in capsys.readouterr().err


def test_a_marker_with_repeated_class_names_is_refused(shard_set, tmp_path):
    copy = tmp_path / "set"
    shutil.copytree(shard_set, copy)
    marker = json.loads((copy / "vitreduce_shards.json").read_text())
    marker["classes"][1] = marker["classes"][0]
    (copy / "vitreduce_shards.json").write_text(json.dumps(marker))
    with pytest.raises(VitreduceError, match="distinct non-empty strings"):
        check_dataset(_data(copy), 4)


def test_segmentation_scenes_are_not_silently_written_as_folders_when_shards_are_asked(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "seg"), "--segmentation", "--shards"]) == 2
    assert "--shards does not apply with --segmentation" in capsys.readouterr().err
    assert not (tmp_path / "seg").exists()
