"""Checkpoints describe, they do not command: every model vitreduce builds (from a checkpoint header, a
config, --model-arg or create_model's kwargs) passes one allow-list of architecture kwargs, is a timm
ViT-family model, has consistent shapes and stays under VITREDUCE_MAX_PARAMS; nothing reaches a
network or a path, and each refusal is one clear line with exit code 2."""
from __future__ import annotations

import json
import os
import pickle
import resource
import socket
from pathlib import Path

import pytest
import timm
import torch
import yaml
from conftest import TINY_VIT, tiny_model
from safetensors import safe_open
from safetensors.torch import save_file

import vitreduce
from vitreduce.cli.main import main
from vitreduce.errors import VitreduceError
from vitreduce.reduction.architecture import MAX_PARAMS_ENV
from vitreduce.reduction.checkpoint import read_metadata
from vitreduce.reduction.weights import read_state_dict
from vitreduce.train.config import load_config
from vitreduce.train.model import build_model

FIXTURES = Path(__file__).parent / "fixtures" / "v0_1"
URL = "http://127.0.0.1:9/weights.pth"


@pytest.fixture
def no_network(monkeypatch) -> list:
    """Every attempt to open a connection or resolve a name is recorded and fails."""
    attempts: list = []

    def refuse(*args, **_kwargs):
        attempts.append(args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def _refused(capsys, argv: list[str], *needles: str) -> str:
    """Run the CLI; assert exit 2, one message naming each needle, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip(), err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    return vitreduce.save(tiny_model("grouped"), tmp_path_factory.mktemp("ckpt") / "good.safetensors")


def _edited(source: Path, target: Path, kwargs: dict | None = None, **header: str) -> Path:
    """A copy of a checkpoint with its model_kwargs updated by ``kwargs`` and header entries replaced."""
    with safe_open(str(source), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        metadata = dict(handle.metadata())
    if kwargs is not None:
        metadata["model_kwargs"] = json.dumps({**json.loads(metadata["model_kwargs"]), **kwargs})
    metadata.update(header)
    save_file(tensors, target, metadata=metadata)
    return target


FETCHING_HEADERS = {
    "overlay": {"pretrained": True, "pretrained_cfg_overlay": {"url": URL}},
    "bare": {"pretrained": True},
    "path": {"checkpoint_path": "/etc/passwd"},
    "cfg": {"pretrained_cfg": {"url": URL, "hf_hub_id": "timm/x"}},
}


@pytest.mark.parametrize("case", sorted(FETCHING_HEADERS))
def test_a_header_that_would_fetch_weights_is_refused_offline(good_checkpoint, tmp_path, capsys, no_network,
                                                             tiny_dataset, case):
    path = _edited(good_checkpoint, tmp_path / "hostile.safetensors", FETCHING_HEADERS[case])
    key = next(iter(FETCHING_HEADERS[case]))
    with pytest.raises(VitreduceError, match=f"hostile.safetensors.*{key}=.*refused.*vitreduce reduce"):
        vitreduce.load(path)
    _refused(capsys, ["eval", str(path), "--data", str(tiny_dataset), "--device", "cpu"], "hostile.safetensors", key)
    _refused(capsys, ["inspect", str(path)], "refused")
    assert no_network == []


def test_an_init_checkpoint_that_would_fetch_weights_is_refused(good_checkpoint, tmp_path, tiny_train_config,
                                                                no_network):
    path = _edited(good_checkpoint, tmp_path / "hostile.safetensors", FETCHING_HEADERS["overlay"])
    tree = tiny_train_config(model={"init_checkpoint": str(path), "embed_dim": 32, "depth": 4, "num_classes": 4})
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump(tree))
    with pytest.raises(VitreduceError, match="hostile.safetensors.*pretrained=True is refused"):
        build_model(load_config(config_file).model)
    assert no_network == []


TAMPERED = {
    "bad JSON": ({"model_kwargs": "{depth: 4"}, "'model_kwargs' is not valid JSON"),
    "kwargs a list": ({"model_kwargs": "[1, 2]"}, "must be a JSON object"),
    "kwargs wrong type": ({"model_kwargs": json.dumps({**TINY_VIT, "depth": "4"})}, "depth: Input should be"),
    "kwarg unknown": ({"model_kwargs": json.dumps({**TINY_VIT, "mlp_layer": "x"})}, "unknown timm kwarg"),
    "non-ViT base": ({"base_model": "resnet50"}, "not a model vitreduce can reduce"),
    "unknown base": ({"base_model": "vit_nonexistent"}, "unknown timm model"),
    "hub base": ({"base_model": "hf-hub:timm/vit_tiny_patch16_224.augreg_in21k"}, "never fetches"),
    "aliases a list": ({"aliases": "[1]"}, "'aliases' must map tensor names"),
    "aliases not names": ({"aliases": '{"a": 1}'}, "'aliases' must map tensor names"),
    "heads": ({"model_kwargs": json.dumps({**TINY_VIT, "num_heads": 5})}, "num_heads 5 does not divide"),
    "reduction": ({"reduction": "groupd"}, "unknown reduction strategy"),
    "huge": ({"model_kwargs": json.dumps({**TINY_VIT, "embed_dim": 65536, "depth": 256})}, MAX_PARAMS_ENV),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_a_tampered_header_is_one_clear_error_naming_the_file(good_checkpoint, tmp_path, capsys, case):
    header, message = TAMPERED[case]
    path = _edited(good_checkpoint, tmp_path / "tampered.safetensors", **header)
    with pytest.raises(VitreduceError, match="tampered.safetensors") as info:
        read_metadata(path)
    assert message in str(info.value)
    _refused(capsys, ["inspect", str(path)], "tampered.safetensors", message)


def test_model_args_that_would_fetch_or_are_unknown_are_refused(tmp_path, capsys, no_network):
    out = tmp_path / "out.safetensors"
    for arg in ("pretrained=true", f"pretrained_cfg_overlay={{url: '{URL}'}}", "checkpoint_path=/etc/passwd",
                "cache_dir=/tmp"):
        _refused(capsys, ["inspect", "vit_tiny_patch16_224", "--model-arg", arg], "--model-arg", "refused")
        _refused(capsys, ["reduce", "vit_tiny_patch16_224", "--reduction", "grouped", "--model-arg", arg,
                          "--out", str(out)], "--model-arg", "refused")
    _refused(capsys, ["inspect", "vit_tiny_patch16_224", "--model-arg", "foo=1"],
             "--model-arg: foo: unknown timm kwarg", "embed_dim", "num_heads")
    _refused(capsys, ["inspect", "vit_tiny_patch16_224", "--model-arg", "depth=four"], "depth: Input should be")
    assert not out.exists() and no_network == []


def test_python_api_refuses_fetching_kwargs_and_hub_names(no_network):
    for kwargs in FETCHING_HEADERS.values():
        with pytest.raises(VitreduceError, match="refused"):
            vitreduce.create_model("vit_tiny_patch16_224", **kwargs)
        if "checkpoint_path" not in kwargs:  # timm's own factory loads that file itself, after our builder
            with pytest.raises(VitreduceError, match="refused|no pretrained weights"):
                timm.create_model("vit_base_patch16_224_grouped_mlp", device="meta", **kwargs)
    for name in ("hf-hub:timm/vit_tiny_patch16_224.augreg_in21k", "timm/vit_tiny_patch16_224", "./weights.pth",
                 "https://example.com/vit"):
        with pytest.raises(VitreduceError, match="never fetches"):
            vitreduce.create_model(name, device="meta")
    with pytest.raises(VitreduceError, match="mlp_layer: unknown timm kwarg"):
        vitreduce.create_model("vit_tiny_patch16_224", mlp_layer=torch.nn.Linear, **TINY_VIT)
    assert no_network == []


def test_non_vit_models_and_inconsistent_shapes_are_refused(capsys):
    with pytest.raises(VitreduceError, match="resnet50 is not a model vitreduce can reduce.*vit_"):
        vitreduce.create_model("resnet50", device="meta")
    _refused(capsys, ["inspect", "resnet50"], "resnet50", "not a model vitreduce can reduce")
    with pytest.raises(VitreduceError, match="num_heads 5 does not divide embed_dim 64; use one of .*16"):
        vitreduce.create_model("vit_tiny_patch16_224", device="meta", embed_dim=64, num_heads=5)
    with pytest.raises(VitreduceError, match=r"img_size \[30, 30\] is not a multiple of patch_size \[4, 4\]"):
        vitreduce.create_model("vit_tiny_patch16_224", device="meta", img_size=30, patch_size=4)
    with pytest.raises(VitreduceError, match="Token pooling needs the class token"):
        vitreduce.create_model("vit_tiny_patch16_224", device="meta", class_token=False)
    with pytest.raises(VitreduceError, match="depth: Input should be less than or equal to 1024"):
        vitreduce.create_model("vit_tiny_patch16_224", device="meta", depth=10**6)
    _refused(capsys, ["inspect", "vit_tiny_patch16_224", "--model-arg", "embed_dim=64", "--model-arg", "num_heads=5"],
             "num_heads 5 does not divide embed_dim 64")


@pytest.mark.parametrize(("override", "message"), [
    ("model.name=resnet50", "model.name: resnet50 is not a model vitreduce can reduce"),
    ("model.num_heads=5", "num_heads 5 does not divide embed_dim 16"),
    ("model.name=hf-hub:timm/vit_tiny_patch16_224", "never fetches"),
    ("model.embed_dim=100000", "embed_dim: Input should be less than or equal to 65536"),
    ("model.depth=true", "model.depth"),
])
def test_train_refuses_a_bad_model_before_writing_anything(tmp_path, tiny_train_config, capsys, override, message):
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump(tiny_train_config()))
    out = tmp_path / "run"
    _refused(capsys, ["train", str(config_file), "--set", override, "--out", str(out)], message)
    assert not out.exists()


def test_the_size_limit_is_read_from_the_environment(monkeypatch, good_checkpoint, tmp_path, tiny_train_config):
    monkeypatch.setenv(MAX_PARAMS_ENV, "1000")
    with pytest.raises(VitreduceError, match=f"more than the limit of 1,000.*{MAX_PARAMS_ENV}"):
        tiny_model()
    with pytest.raises(VitreduceError, match=f"good.safetensors.*{MAX_PARAMS_ENV}"):
        vitreduce.load(good_checkpoint)
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump(tiny_train_config()))
    with pytest.raises(VitreduceError, match=f"model: .*{MAX_PARAMS_ENV}"):
        load_config(config_file)
    monkeypatch.setenv(MAX_PARAMS_ENV, "lots")
    with pytest.raises(VitreduceError, match=f"{MAX_PARAMS_ENV}='lots' must be a positive whole number"):
        tiny_model()
    monkeypatch.setenv(MAX_PARAMS_ENV, "1_000_000")
    assert tiny_model() is not None


def test_the_size_check_allocates_nothing():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(VitreduceError, match=r"206,\d{3},\d{3},\d{3} parameters .*GiB in fp32"):
        vitreduce.create_model("vit_tiny_patch16_224", embed_dim=16384, depth=64, num_heads=16)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1 << 20  # under 1 GiB more


def test_models_are_built_with_the_hub_offline(monkeypatch):
    seen = []
    real = timm.create_model

    def spy(*args, **kwargs):
        import huggingface_hub.constants as constants

        seen.append((os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE, kwargs.get("pretrained")))
        return real(*args, **kwargs)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(timm, "create_model", spy)
    vitreduce.create_model("vit_tiny_patch16_224", "grouped", **{**TINY_VIT, "depth": 3})
    assert seen and all(entry == ("1", True, False) for entry in seen)
    assert "HF_HUB_OFFLINE" not in os.environ  # restored: the user's own timm use is untouched


def test_valid_checkpoints_and_registered_names_still_build(good_checkpoint, images):
    assert torch.equal(vitreduce.load(good_checkpoint)(images), tiny_model("grouped")(images))
    assert vitreduce.load(FIXTURES / "model_grouped_shallow.safetensors").num_classes == 4
    for name in ("vit_base_patch16_224_grouped_mlp", "vit_base_patch16_224_shallow_mlp",
                 "vit_base_patch16_224_thin_mlp"):
        model = timm.create_model(name, num_classes=10, device="meta", pretrained_cfg_overlay=None)
        assert model.num_classes == 10
        with pytest.raises(VitreduceError, match="no pretrained weights"):
            timm.create_model(name, pretrained=True)
    model = vitreduce.create_model("deit3_small_patch16_224", device="meta", img_size=(32, 32), patch_size=16)
    assert vitreduce.describe(model).model == "deit3_small_patch16_224"


def test_damaged_pickle_weights_are_not_called_unsafe(tmp_path, capsys):
    good = tmp_path / "good.pth"
    torch.save(tiny_model().state_dict(), good)
    data = good.read_bytes()
    for name, content in (("half.pth", data[: len(data) // 2]), ("head.pth", data[:100]), ("empty.pth", b""),
                          ("noise.pth", bytes(range(256)) * 8)):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(VitreduceError, match="truncated or corrupted") as info:
            read_state_dict(path)
        assert "could run code" not in str(info.value)
        _refused(capsys, ["reduce", "vit_tiny_patch16_224", "--reduction", "grouped", "--weights", str(path),
                          "--out", str(tmp_path / "o.safetensors")], name, "truncated or corrupted")
    raw = tmp_path / "raw.pth"  # a plain pickle: only a full unpickler could read it
    with raw.open("wb") as handle:
        pickle.dump({"w": torch.zeros(2)}, handle)
    with pytest.raises(VitreduceError, match="refused to load .*could run code"):
        read_state_dict(raw)
    loop = tmp_path / "loop.pth"  # a dict nested in itself must not loop forever
    nested: dict = {}
    nested["model"] = nested
    torch.save(nested, loop)
    with pytest.raises(VitreduceError, match="not a state dict"):
        read_state_dict(loop)


def test_train_with_a_hostile_init_checkpoint_exits_2_offline(good_checkpoint, tmp_path, tiny_train_config, capsys,
                                                              no_network):
    path = _edited(good_checkpoint, tmp_path / "hostile.safetensors", FETCHING_HEADERS["overlay"])
    tree = tiny_train_config(model={"init_checkpoint": str(path), "embed_dim": 32, "depth": 4, "num_classes": 4})
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump(tree))
    _refused(capsys, ["train", str(config_file), "--out", str(tmp_path / "run")], "hostile.safetensors", "refused")
    assert no_network == []


def test_eval_refuses_bad_loader_options(good_checkpoint, tiny_dataset, capsys):
    base = ["eval", str(good_checkpoint), "--data", str(tiny_dataset), "--device", "cpu"]
    _refused(capsys, [*base, "--workers", "-1"], "--workers must be in [0,")
    _refused(capsys, [*base, "--batch-size", "0"], "--batch-size must be in [1,")
