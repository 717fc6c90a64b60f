"""The config tree: shipped configs validate, mistakes are refused early with the dotted key."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vitreduce.cli.main import main
from vitreduce.errors import VitreduceError
from vitreduce.train.config import TrainConfig, changed_keys, dump, load_config, validate

REPO = Path(__file__).resolve().parents[1]
PAPER = sorted((REPO / "configs" / "paper").glob("*.yaml"))
DEMO = sorted((REPO / "configs" / "demo").glob("*.yaml"))
TINY_CONFIG = REPO / "configs" / "tiny.yaml"


def test_shipped_configs_exist():
    assert [p.stem for p in PAPER] == ["vit_b16_in1k_baseline", "vit_b16_in1k_grouped", "vit_b16_in1k_shallow"]
    assert [p.stem for p in DEMO] == ["baseline", "grouped", "shallow", "thin"]


@pytest.mark.parametrize("path", PAPER + DEMO, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_shipped_config_and_its_tiny_variant_validate(path):
    config = load_config(path)
    assert isinstance(config, TrainConfig)
    tiny = load_config([path, TINY_CONFIG])
    assert tiny.model.embed_dim == 16 and tiny.precision == "fp32" and tiny.epochs == 1
    assert tiny.model.reduction == config.model.reduction  # the variant keeps what it is a variant of


def test_paper_configs_state_the_recipe():
    """Every value of paper-facts.md's recipe, and the three variants differ only by the reduction."""
    configs = [load_config(p) for p in PAPER]
    for c in configs:
        assert (c.seed, c.epochs, c.precision) == (42, 300, "fp16")
        assert (c.model.name, c.model.num_classes, c.model.drop_path_rate) == ("vit_base_patch16_224", 1000, 0.1)
        assert c.data.batch_size * 2 * c.optimizer.accum_steps == 1024  # x 2 devices (torchrun)
        o = c.optimizer
        assert (o.name, o.lr, o.weight_decay, o.betas, o.clip_grad) == ("adamw", 1e-3, 0.05, (0.9, 0.999), None)
        s = c.schedule
        assert (s.name, s.warmup_epochs, s.warmup_lr, s.min_lr, s.on_updates) == ("cosine", 5, 1e-5, 0.0, False)
        a = c.augment
        assert (a.mixup, a.cutmix, a.mixup_switch_prob, a.smoothing) == (0.8, 1.0, 0.5, 0.1)
        assert (a.auto_augment, a.reprob, a.repeated_aug, a.scale) == ("rand-m9-mstd0.5-inc1", 0.25, 3, (0.08, 1.0))
        assert (a.crop_pct, a.interpolation, a.mean, a.std) == (0.9, "bicubic", (0.5,) * 3, (0.5,) * 3)
        assert c.ema.enabled and c.ema.decay == 0.9998
    assert [c.model.reduction for c in configs] == ["none", "grouped", "shallow:ratio=0.5"]
    dicts = [c.to_dict() for c in configs]
    for other in dicts[1:]:
        assert changed_keys(dicts[0], other) == [f"model.reduction: none -> {other['model']['reduction']}"]


def test_demo_configs_differ_only_by_reduction():
    dicts = [load_config(p).to_dict() for p in DEMO]
    for other in dicts[1:]:
        assert [line.split(":")[0] for line in changed_keys(dicts[0], other)] == ["model.reduction"]


def _write(tmp_path, tree) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_unknown_key_names_dotted_path_and_closest(tmp_path):
    path = _write(tmp_path, {"data": {"root": "x", "batch_sise": 4}, "optimizer": {"lrr": 0.1}})
    with pytest.raises(VitreduceError) as err:
        load_config(path)
    message = str(err.value)
    assert "data.batch_sise: unknown key; did you mean data.batch_size" in message
    assert "optimizer.lrr: unknown key; did you mean optimizer.lr" in message


def test_wrong_type_and_bad_values_are_named(tmp_path):
    path = _write(tmp_path, {"data": {"root": "x"}, "epochs": "many", "model": {"reduction": "groupd"}})
    with pytest.raises(VitreduceError) as err:
        load_config(path, ["optimizer.clip_grad=-1", "model.name=vit_bse_patch16_224"])
    message = str(err.value)
    assert "epochs: Input should be a valid integer" in message
    assert "model.reduction: unknown reduction strategy 'groupd'" in message and "did you mean 'grouped'" in message
    assert "optimizer.clip_grad: Input should be greater than 0" in message
    assert "did you mean vit_base_patch16_224" in message


def test_missing_data_root_is_reported(tmp_path):
    with pytest.raises(VitreduceError, match=r"data: required|data.root: required"):
        load_config(_write(tmp_path, {"epochs": 1}))


def test_set_parses_yaml_values(tmp_path):
    path = _write(tmp_path, {"data": {"root": "x"}})
    config = load_config(path, ["optimizer.betas=[0.9, 0.95]", "optimizer.lr=2e-3", "model.init_checkpoint=null",
                                "ema.enabled=false", "model.reduction=grouped:size=3"])
    assert config.optimizer.betas == (0.9, 0.95) and config.optimizer.lr == 0.002
    assert config.model.init_checkpoint is None and config.ema.enabled is False
    assert config.model.reduction == "grouped:size=3"
    with pytest.raises(VitreduceError, match="expected dotted.key=value"):
        load_config(path, ["optimizer.lr"])
    with pytest.raises(VitreduceError, match="data.root is a value"):
        load_config(path, ["data.root.x=1"])


def test_later_files_override_earlier_ones(tmp_path):
    base = _write(tmp_path, {"data": {"root": "x", "batch_size": 4}, "optimizer": {"lr": 0.1}})
    overlay = tmp_path / "o.yaml"
    overlay.write_text("optimizer: {weight_decay: 0.0}\n")
    config = load_config([base, overlay])
    assert (config.optimizer.lr, config.optimizer.weight_decay, config.data.batch_size) == (0.1, 0.0, 4)


def test_fp16_on_cpu_is_refused_at_validation():
    with pytest.raises(VitreduceError, match="fp16 needs a CUDA GPU"):
        validate({"data": {"root": "x"}, "precision": "fp16", "device": "cpu"})


def test_resolved_config_round_trips_and_differences_name_keys(tmp_path):
    config = load_config(DEMO[1])
    path = tmp_path / "config.yaml"
    path.write_text(dump(config))
    again = load_config(path)
    assert again == config
    changed = load_config(path, ["optimizer.lr=0.004"])
    assert changed_keys(config.to_dict(), changed.to_dict()) == [f"optimizer.lr: {config.optimizer.lr} -> 0.004"]
    # Keys that cannot change the result may differ on resume.
    assert changed_keys(config.to_dict(), load_config(path, ["data.workers=7"]).to_dict()) == []


def test_cli_refuses_a_bad_config_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", str(DEMO[0]), "--set", "optimizr.lr=1", "--out", str(out)])
    assert code == 2
    assert "optimizr: unknown key; did you mean optimizer" in capsys.readouterr().err
    assert not out.exists()
