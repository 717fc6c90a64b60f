"""The efficiency profiler: exact static memory, ratios from one interleaved call, clear errors, JSON."""
from __future__ import annotations

import json

import pytest
import torch

import vitreduce
from vitreduce.cli.main import main
from vitreduce.efficiency.memory import MB, static_memory
from vitreduce.efficiency.profiler import profile_variants, write_throughput_json
from vitreduce.efficiency.workload import TrainStep, make_batch
from vitreduce.errors import VitreduceError
from vitreduce.report.write import read_throughput

# Small enough to build and step in milliseconds; 2 blocks so grouped shares one MLP.
SMALL = dict(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2)
MEDIUM = dict(img_size=16, patch_size=8, embed_dim=256, depth=2, num_heads=4)  # ~6.5 MB of weights: above RSS noise
FAST = dict(batch_size=2, repeats=2, warmup=0, memory=False, model_kwargs=SMALL, num_classes=5)
JSON_KEYS = {"reduction", "params", "macs_linear", "macs_total", "infer_img_s", "train_img_s", "peak_mem_infer_mb",
             "peak_mem_train_mb", "weights_bytes", "grads_bytes", "optimizer_bytes"}


def _hand_counted_grouped_elements(dim=8, hidden=32, depth=2, patches=4, chans=3, patch=4, classes=3):
    """Element count of a ViT with all blocks sharing one MLP, written out layer by layer."""
    patch_embed = dim * chans * patch * patch + dim
    tokens = dim + (1 + patches) * dim  # cls_token + pos_embed
    attention_part = 2 * dim + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + 2 * dim  # norm1, qkv, proj, norm2
    mlp = (dim * hidden + hidden) + (hidden * dim + dim)  # once: shared by every block
    head = 2 * dim + dim * classes + classes  # final norm + classifier
    tensors = 2 + 2 + 8 * depth + 4 + 4
    return patch_embed + tokens + depth * attention_part + mlp + head, tensors


def test_static_memory_counts_a_shared_mlp_once_exactly():
    model = vitreduce.create_model("vit_tiny_patch16_224", "grouped", img_size=8, patch_size=4, embed_dim=8,
                                   depth=2, num_heads=2, num_classes=3)
    elements, tensors = _hand_counted_grouped_elements()
    assert elements == 1675
    assert static_memory(model) == {
        "weights_bytes": 4 * elements, "grads_bytes": 4 * elements, "optimizer_bytes": 2 * 4 * elements + 4 * tensors,
    }
    # Naive iteration would count the shared MLP twice: the test above can tell the difference.
    naive = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert naive == elements + (8 * 32 + 32 + 32 * 8 + 8)


def test_static_memory_matches_what_adamw_and_autograd_allocate():
    model = vitreduce.create_model("vit_tiny_patch16_224", "grouped", img_size=8, patch_size=4, embed_dim=8,
                                   depth=2, num_heads=2, num_classes=3)
    model.patch_embed.proj.weight.requires_grad_(False)  # frozen: no gradient, no AdamW state
    expected = static_memory(model)
    step = TrainStep(model, "fp32")
    step(*make_batch(model, 2, "cpu"))
    params = {id(p): p for p in model.parameters()}.values()
    assert sum(p.grad.nbytes for p in params if p.grad is not None) == expected["grads_bytes"]
    state = sum(t.nbytes for s in step.optimizer.state.values() for t in s.values())
    assert state == expected["optimizer_bytes"]
    frozen = model.patch_embed.proj.weight.numel() * 4
    assert expected["weights_bytes"] - expected["grads_bytes"] == frozen


def test_one_call_returns_every_variant_with_ratios_to_the_first():
    profiles = profile_variants("vit_tiny_patch16_224", ["none", "grouped", "shallow"], mode="both", **FAST)
    first, grouped, shallow = profiles
    assert [p.reduction for p in profiles] == ["none", "grouped", "shallow:ratio=0.5"]
    for key in ("params_ratio", "macs_ratio", "infer_ratio", "train_ratio", "static_train_ratio"):
        assert getattr(first, key) == 1.0
    for p in profiles:
        assert p.infer_img_s_min <= p.infer_img_s <= p.infer_img_s_max
        assert p.train_img_s_min <= p.train_img_s <= p.train_img_s_max
        assert p.infer_ratio == round(p.infer_img_s / first.infer_img_s, 4)
        assert p.train_ratio == round(p.train_img_s / first.train_img_s, 4)
        assert p.params_ratio == round(p.params / first.params, 4)
        assert p.peak_mem_infer_mb is None and p.peak_mem_train_mb is None
    assert grouped.unique_mlps == 1 and grouped.macs_ratio == 1.0 and grouped.params_ratio < 1
    assert shallow.unique_mlps == 2 and shallow.macs_ratio < 1
    assert grouped.weights_bytes == 4 * grouped.params


def test_infer_mode_leaves_training_figures_null():
    (profile,) = profile_variants("vit_tiny_patch16_224", ["none"], mode="infer", precision="bf16", **FAST)
    assert profile.infer_img_s > 0 and profile.train_img_s is None and profile.train_ratio is None


@pytest.mark.slow
def test_peak_memory_is_measured_per_variant_and_includes_the_state():
    profiles = profile_variants("vit_tiny_patch16_224", ["none", "shallow"], batch_size=2, repeats=1, warmup=0,
                                model_kwargs=MEDIUM, num_classes=10, memory=True)
    for p in profiles:
        assert p.memory_method and "RSS" in p.memory_method
        # Weights (and in training grads + AdamW state) are live at the peak, so they are a lower bound.
        assert p.peak_mem_infer_mb * MB >= 0.9 * p.weights_bytes
        assert p.peak_mem_train_mb * MB >= 0.9 * p.static_train_bytes
    none, shallow = profiles
    assert shallow.peak_mem_train_mb < none.peak_mem_train_mb
    assert shallow.peak_mem_train_ratio == round(shallow.peak_mem_train_mb / none.peak_mem_train_mb, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_profile_measures_allocated_peak():
    profiles = profile_variants("vit_tiny_patch16_224", ["none", "grouped"], device="cuda", precision="fp16",
                                batch_size=2, repeats=1, warmup=1, model_kwargs=MEDIUM, num_classes=10, memory=True)
    for p in profiles:
        assert "max_memory_allocated" in p.memory_method
        assert p.peak_mem_train_mb * MB >= 0.99 * p.static_train_bytes
        assert p.peak_mem_infer_mb * MB >= 0.99 * p.weights_bytes


def _cli(capsys, *args):
    code = main(["profile", "test_vit", "--img-size", "32", "--batch-size", "2", "--repeats", "1",
                 "--warmup", "0", "--no-memory", *args])
    return code, capsys.readouterr()


@pytest.mark.parametrize("args, message", [
    (["--precision", "fp16"], "fp16 is only supported on cuda"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--precision", "fp8"], "unknown precision"),
    (["--mode", "eval"], "unknown mode"),
    (["--reduction", "grouped:size=0"], "must be >= 1"),
    (["--reduction", "shallow", "--reduction", "shallow:ratio=0.5"], "given twice"),
    (["--batch-size", "0"], "batch size must be a positive integer"),
    (["--repeats", "0"], "repeats must be >= 1"),
    (["--compile"], "--compile needs --warmup >= 1"),
    (["--batch-size", "100000000"], "use a smaller --batch-size"),
])
def test_bad_arguments_exit_2_with_a_clear_message(capsys, args, message):
    code, out = _cli(capsys, *args)
    assert code == 2
    assert message in out.err and "Traceback" not in out.err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_requested_without_cuda(capsys):
    code, out = _cli(capsys, "--device", "cuda")
    assert code == 2 and "CUDA is not available" in out.err and "--device cpu" in out.err


def test_json_output_parses_and_has_the_keys(capsys):
    code, out = _cli(capsys, "--json", "--reduction", "none", "--reduction", "shallow")
    assert code == 0
    rows = json.loads(out.out)
    assert [r["reduction"] for r in rows] == ["none", "shallow:ratio=0.5"]
    for row in rows:
        assert set(row) >= JSON_KEYS
        assert row["infer_img_s"] > 0 and row["train_img_s"] > 0
        assert row["peak_mem_infer_mb"] is None and row["peak_mem_train_mb"] is None  # --no-memory
    assert rows[0]["params_ratio"] == 1.0 and rows[1]["macs_ratio"] < 1


def test_table_names_the_settings(capsys):
    code, out = _cli(capsys, "--mode", "infer", "--reduction", "none", "--reduction", "grouped")
    assert code == 0
    assert "batch 2" in out.out and "threads" in out.out and "peak memory: not measured" in out.out
    assert "grouped" in out.out


def test_checkpoint_profiles_its_architecture_against_none(tmp_path, capsys):
    model = vitreduce.create_model("vit_tiny_patch16_224", "grouped", num_classes=5, **SMALL)
    path = vitreduce.save(model, tmp_path / "model.safetensors")
    code = main(["profile", str(path), "--mode", "infer", "--batch-size", "2", "--repeats", "1", "--warmup", "0",
                 "--no-memory", "--json"])
    printed = capsys.readouterr()
    rows = json.loads(printed.out)
    assert code == 0
    assert [r["reduction"] for r in rows] == ["none", "grouped"]
    # random inputs: it says that no preprocessing applies, and which the file records
    assert "no image is read, so no preprocessing is applied (the file's eval preprocessing: " in printed.err
    assert rows[1]["params"] == vitreduce.describe(model).params


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    code = main(["profile", str(tmp_path / "absent.safetensors"), "--no-memory"])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_write_throughput_json_is_what_the_report_reads(tmp_path):
    variants = {"baseline": "none", "shallow": "shallow:ratio=0.5", "control": "none"}
    path = write_throughput_json(tmp_path, variants, "vit_tiny_patch16_224", batch_size=2, repeats=1, warmup=0,
                                 model_kwargs=SMALL, num_classes=5)
    data = read_throughput(tmp_path)
    assert path == tmp_path / "throughput.json" and set(data) == set(variants)
    assert all(entry["infer_img_s"] > 0 for entry in data.values())
    assert data["baseline"]["infer_img_s"] == data["control"]["infer_img_s"]  # one spec, profiled once
    with pytest.raises(VitreduceError, match="inference throughput"):
        write_throughput_json(tmp_path, variants, "vit_tiny_patch16_224", mode="train", model_kwargs=SMALL)
