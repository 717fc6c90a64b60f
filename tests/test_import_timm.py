"""Importing a timm checkpoint: the architecture is read off the tensors, and the command line is asked
only for what they cannot tell (the head count), in one message."""
from __future__ import annotations

import timm
import torch

import vitreduce
from vitreduce.cli.main import main
from vitreduce.reduction.inferred import infer_vit_kwargs

TRAINED = dict(img_size=32, patch_size=4, embed_dim=64, depth=3, num_heads=2, num_classes=10, mlp_ratio=3.0)


def timm_checkpoint(path, **kwargs):
    """A timm train.py-style .pth.tar of a small ViT ('state_dict', 'epoch', ...)."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", **kwargs)
    torch.save({"state_dict": model.state_dict(), "epoch": 3, "arch": "vit_tiny_patch16_224"}, path)
    return model


def reduce_argv(weights, out, *extra):
    return ["reduce", "vit_tiny_patch16_224", "--weights", str(weights), "--reduction", "grouped", "--out", str(out),
            *extra]


def test_the_tensors_give_the_architecture_and_only_heads_are_asked_for(tmp_path, capsys):
    source = timm_checkpoint(tmp_path / "model_best.pth.tar", **TRAINED)
    out = tmp_path / "grouped.safetensors"
    assert main(reduce_argv(tmp_path / "model_best.pth.tar", out)) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1  # one message, naming what was read and the one thing to add
    for said in ("patch_size=4", "embed_dim=64", "depth=3", "mlp_ratio=3", "num_classes=10", "class_token=True",
                 "reg_tokens=0", "img_size=32", "--model-arg num_heads=H (H divides 64"):
        assert said in err, said
    assert not out.exists()
    assert main(reduce_argv(tmp_path / "model_best.pth.tar", out, "--model-arg", "num_heads=2")) == 0
    assert "architecture from the tensors of" in capsys.readouterr().out
    reduced = vitreduce.load(out)
    assert reduced.blocks[0].attn.num_heads == 2 and len(reduced.blocks) == 3
    assert torch.equal(reduced.pos_embed, source.pos_embed)
    assert torch.equal(reduced.blocks[2].attn.qkv.weight, source.blocks[2].attn.qkv.weight)


def test_a_contradicting_option_is_named(tmp_path, capsys):
    timm_checkpoint(tmp_path / "w.pth.tar", **TRAINED)
    argv = reduce_argv(tmp_path / "w.pth.tar", tmp_path / "o.safetensors", "--model-arg", "num_heads=2",
                       "--model-arg", "depth=4", "--img-size", "32")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "drop or correct depth=4 (the tensors hold 3)" in err and "img_size" not in err.split("drop")[1]


def test_tokens_layer_scale_and_pooling_are_read_too():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=2,
                              num_heads=4, reg_tokens=2, init_values=1e-5, global_pool="avg", fc_norm=True,
                              qk_norm=True, qkv_bias=False, num_classes=0)
    kwargs = infer_vit_kwargs(model.state_dict())
    assert kwargs["num_heads"] == 4  # from the q/k norms' head width
    assert {k: kwargs[k] for k in ("reg_tokens", "global_pool", "qkv_bias", "num_classes", "img_size")} == {
        "reg_tokens": 2, "global_pool": "avg", "qkv_bias": False, "num_classes": 0, "img_size": 16}
    rebuilt = timm.create_model("vit_tiny_patch16_224", **kwargs)
    rebuilt.load_state_dict(model.state_dict(), strict=True)  # the inferred architecture takes the weights
    assert infer_vit_kwargs({"conv.weight": torch.zeros(3, 3, 3, 3)}) is None  # not a ViT: nothing inferred


def test_a_head_count_taken_from_the_named_model_is_said(tmp_path, capsys):
    """At the named model's width the tensors cannot tell its head count from another: the base model's is used,
    and the printed line says so and how to change it (silent before, and 6 heads at width 192 came out as 3)."""
    timm_checkpoint(tmp_path / "w.pth.tar", img_size=32, patch_size=4, embed_dim=192, depth=2, num_heads=6,
                    num_classes=10)
    out = tmp_path / "o.safetensors"
    assert main(reduce_argv(tmp_path / "w.pth.tar", out)) == 0
    printed = capsys.readouterr().out
    assert "num_heads=3 from vit_tiny_patch16_224 (the tensors do not determine it: add --model-arg num_heads=H" \
        in printed
    assert main(reduce_argv(tmp_path / "w.pth.tar", tmp_path / "six.safetensors", "--model-arg", "num_heads=6")) == 0
    assert "num_heads=3 from" not in capsys.readouterr().out
    assert vitreduce.load(tmp_path / "six.safetensors").blocks[0].attn.num_heads == 6
