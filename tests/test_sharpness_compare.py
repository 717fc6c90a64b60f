"""ASAM per its reference (Kwon et al. 2021, SamsungLabs/ASAM), the trace per unique parameter, their
options, and the report's sharpness section with what each number can support, on old files too."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import vitreduce
from vitreduce.cli.main import main
from vitreduce.errors import VitreduceError
from vitreduce.reduction.params import unique_named_parameters
from vitreduce.report.render import render_markdown
from vitreduce.report.runs import load_study
from vitreduce.report.sharpness_section import sharpness_section
from vitreduce.sharpness.measures import analysis_mode, analyze_sharpness
from vitreduce.sharpness.options import SharpnessOptions

OLD_STUDY = Path(__file__).resolve().parent / "fixtures" / "v0_1" / "study" / "out"


def tiny_vit(reduction="grouped", depth=2):
    torch.manual_seed(0)
    return vitreduce.create_model("vit_tiny_patch16_224", reduction=reduction, depth=depth, img_size=8,
                                  patch_size=4, in_chans=1, embed_dim=8, num_heads=2, mlp_ratio=2.0,
                                  num_classes=3).double()


def random_batches(count=2, size=4):
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(size, 1, 8, 8, generator=generator, dtype=torch.float64),
             torch.randint(0, 3, (size,), generator=generator)) for _ in range(count)]


def mean_loss(model, batches):
    return torch.stack([F.cross_entropy(model(images), targets) for images, targets in batches]).mean()


def reference_asam(model, batches, rho, eta):
    """The definition, written out: eps_w = rho T_w^2 g / ||T g|| with T_w = |w| + eta on weight tensors and
    T = 1 on biases, pos_embed and cls_token; the loss rise at w + eps. Returns it and the scaled count."""
    with analysis_mode(model):
        names, params = zip(*unique_named_parameters(model), strict=True)
        loss = mean_loss(model, batches)
        grads = torch.autograd.grad(loss, params)
        is_weight = [name.rsplit(".", 1)[-1] == "weight" for name in names]
        scales = [p.detach().abs() + eta if weight else torch.ones_like(p)
                  for p, weight in zip(params, is_weight, strict=True)]
        norm = torch.sqrt(sum(((t * g) ** 2).sum() for t, g in zip(scales, grads, strict=True)))
        perturbed = copy.deepcopy(model)  # a shared MLP stays one module object in the copy
        with torch.no_grad():
            for (_, p), t, g in zip(unique_named_parameters(perturbed), scales, grads, strict=True):
                p.add_(rho * t * t * g / norm)
            rise = mean_loss(perturbed, batches) - loss
    return float(rise), sum(p.numel() for p, weight in zip(params, is_weight, strict=True) if weight)


def test_asam_is_the_references_definition_on_a_shared_weight_vit():
    model = tiny_vit()
    batches = random_batches()
    names = [name for name, _ in unique_named_parameters(model)]
    assert {"cls_token", "pos_embed", "blocks.0.mlp.fc1.bias"} <= set(names)  # left unscaled (T = 1)
    result = analyze_sharpness(model, batches, top_k=0, trace_samples=0, adaptive=True)
    expected, scaled = reference_asam(model, batches, rho=0.5, eta=0.01)  # the reference's defaults
    assert result.asam_sharpness == pytest.approx(expected, rel=1e-9)
    assert (result.asam_rho, result.eta, result.rho) == (0.5, 0.01, 0.05)
    assert result.asam_scaled_parameters == scaled < result.parameters
    custom = analyze_sharpness(model, batches, top_k=0, trace_samples=0, adaptive=True, asam_rho=0.2, eta=0.1)
    assert custom.asam_sharpness == pytest.approx(reference_asam(model, batches, rho=0.2, eta=0.1)[0], rel=1e-9)
    recorded = custom.to_dict()
    assert (recorded["asam_rho"], recorded["eta"]) == (0.2, 0.1)


def test_trace_per_parameter_counts_a_shared_tensor_once():
    model = tiny_vit("grouped", depth=2)
    result = analyze_sharpness(model, random_batches(), top_k=0, trace_samples=4)
    unique = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    every_use = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert result.parameters == unique < every_use
    assert result.trace_per_parameter == pytest.approx(result.trace / unique, rel=1e-12)
    assert result.asam_sharpness is None and result.asam_rho is None  # not asked for


@pytest.mark.parametrize("values, flag", [({"eta": -0.01}, "--eta must be >= 0"),
                                          ({"eta": float("inf")}, "--eta must be a finite number"),
                                          ({"asam_rho": 0.0}, "--asam-rho must be > 0"),
                                          ({"asam_rho": float("nan")}, "--asam-rho must be a finite number"),
                                          ({"rho": -1.0}, "--rho must be > 0")])
def test_bad_radius_or_eta_names_its_flag(values, flag):
    with pytest.raises(VitreduceError, match=flag):
        SharpnessOptions.checked(**values)


def test_the_cli_refuses_a_bad_eta_before_loading(tmp_path, capsys):
    args = ["sharpness", str(tmp_path / "missing.safetensors"), "--data", str(tmp_path), "--adaptive"]
    assert main([*args, "--eta", "-1"]) == 2
    assert "--eta must be >= 0" in capsys.readouterr().err
    assert main([*args, "--asam-rho", "0"]) == 2
    assert "--asam-rho must be > 0" in capsys.readouterr().err


def section_text(study_dir):
    return render_markdown(sharpness_section(load_study(study_dir)))


def table_row(text, variant):
    return next(line for line in text.splitlines() if line.startswith(f"| {variant} | final |"))


def test_the_report_reads_analysis_files_written_before_asam():
    text = section_text(OLD_STUDY)
    assert "| variant | checkpoint | n | loss | trace / parameter | ASAM sharpness | top eigenvalue |" in text
    # tr(H) / P from each old file's trace and parameter count, mean over the two seeds
    old = [json.loads(p.read_text()) for p in OLD_STUDY.glob("runs/grouped/seed*/analysis/sharpness_final.json")]
    per_parameter = sum(r["trace"] / r["parameters"] for r in old) / len(old)
    cells = table_row(text, "grouped").split(" | ")
    mean, std = cells[4].split(" ± ")  # one format for mean and std: the decimals of the column's spread
    decimals = len(std.split(".")[1])
    assert len(mean.split(".")[1]) == decimals and abs(float(mean) - per_parameter) <= 0.5 * 10**-decimals
    assert cells[5] == "n/a"
    assert "ASAM is n/a for 4 of 4 results" in text
    assert "compare checkpoints and seeds of one variant only" in text and "None of these numbers is a test" in text
    assert "rho n/a" not in text


def test_the_report_shows_asam_and_its_settings(tmp_path):
    study = tmp_path / "out"
    shutil.copytree(OLD_STUDY, study, symlinks=True)
    for path in study.glob("runs/*/seed*/analysis/sharpness_final.json"):
        result = json.loads(path.read_text())
        result.update(asam_sharpness=0.25, asam_rho=0.5, eta=0.01)
        path.write_text(json.dumps(result))
    text = section_text(study)
    assert table_row(text, "baseline").split(" | ")[5] == "0.250 ± 0.000"
    assert "rho 0.5, eta 0.01" in text and "rho 0.05)" in text and "ASAM is n/a" not in text


def test_the_cli_text_names_asams_settings():
    from vitreduce.cli.sharpness_cmd import format_result

    result = analyze_sharpness(tiny_vit(), random_batches(), top_k=0, trace_samples=2, adaptive=True, eta=0.02)
    text = format_result(result)
    assert f"T = |w| + 0.02 on {result.asam_scaled_parameters:,} weight parameters" in text and "rho 0.5" in text
    assert "trace / param" in text
