"""timm's transformer zoo: every model family vitreduce claims either reduces under none / grouped /
shallow / thin with counts that add up, or is refused with the clear error.

Built on the meta device (shapes only), once per name; each reduction works on a deep copy. Per name
that is about 0.13 s to build, 0.05 s a copy and 0.07 s for thin (which builds fresh MLPs), about
two minutes of one core for the 285 names, so by default the full check runs on one model per distinct
structural signature (``_signature``: family, model class, block, MLP, MLP norm, attention and
LayerScale classes, class token, register tokens): the smallest such model, listed in
REPRESENTATIVES. Every name is still built (a third of the cost) to check that its signature is one
of the representatives'; the names are split into chunks so that pytest-xdist spreads them.
``VITREDUCE_ZOO=all`` runs the full check on every name instead.

The expected counts are computed here without vitreduce's surgery: the MLPs are found by their module
names (``...blocks.N.mlp``), grouped sharing removes the MLP of every second block of a stage, and a
shallow or thin MLP keeps ``round(h / 2)`` of its ``h`` hidden units, each of which owns the same number of
parameters (everything but fc2's bias scales with ``h``).
"""
from __future__ import annotations

import copy
import fnmatch
import functools
import json
import os
import re
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import vitreduce
from vitreduce.errors import VitreduceError
from vitreduce.reduction.architecture import FAMILIES, hub_offline
from vitreduce.study.runner import run_study
from vitreduce.study.spec import load_spec

REPRESENTATIVES = [  # the smallest model of each distinct key (see the module docstring), 39 of them
    "deit3_small_patch16_224", "deit_tiny_distilled_patch16_224", "deit_tiny_patch16_224",
    "eva02_base_patch14_224", "eva02_enormous_patch14_clip_224", "eva02_tiny_patch14_224",
    "eva_giant_patch14_224", "eva_large_patch14_196", "swin_tiny_patch4_window7_224", "swinv2_cr_tiny_224",
    "swinv2_tiny_window8_256", "vit_base_patch16_reg4_gap_256", "vit_base_patch16_rpn_224",
    "vit_base_patch16_sapiens2", "vit_base_patch16_siglip_gap_224", "vit_base_patch16_xp_224",
    "vit_dpwee_patch16_reg1_gap_256", "vit_dwee_patch16_reg1_gap_256", "vit_giant_patch14_dinov2",
    "vit_giant_patch14_reg1_tipsv2", "vit_medium_patch16_gap_256", "vit_medium_patch16_rope_reg1_gap_256",
    "vit_pe_core_gigantic_patch14_448", "vit_pe_lang_gigantic_patch14_448", "vit_pe_spatial_tiny_patch16_512",
    "vit_pwee_patch16_reg1_gap_256", "vit_relpos_medium_patch16_cls_224", "vit_relpos_small_patch16_rpn_224",
    "vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2", "vit_small_patch16_18x2_224",
    "vit_small_patch16_rope_224", "vit_small_plus_patch16_dinov3", "vit_small_r26_s32_224",
    "vit_so400m_patch16_radio_v4", "vit_srelpos_small_patch16_224", "vit_tiny_patch16_224",
    "vit_tiny_patch16_dinov3_qkvb", "vit_wee_patch16_reg1_gap_256",
]
REFUSED = "no ViT blocks|has no .mlp|which vitreduce cannot reduce"  # the clear errors
_MLP_NAME = re.compile(r"(.*\bblocks)\.(\d+)\.mlp$")
ALL_NAMES = [n for n in timm.list_models(list(FAMILIES)) if not n.endswith("_mlp")]  # not vitreduce's variants
CHUNK = 24


def _names() -> list[str]:
    return ALL_NAMES if os.environ.get("VITREDUCE_ZOO") == "all" else REPRESENTATIVES


def _signature(name: str, model: nn.Module) -> tuple:
    """What decides how vitreduce handles a model: its family and the classes of its parts."""
    blocks = [m for path, m in model.named_modules()
              if re.fullmatch(r"(.*\.)?blocks\.\d+", path) and isinstance(getattr(m, "mlp", None), nn.Module)]

    def classes(modules) -> tuple[str, ...]:
        return tuple(sorted({type(m).__name__ for m in modules}))

    return (next(f for f in FAMILIES if fnmatch.fnmatch(name, f)), type(model).__name__, classes(blocks),
            classes(b.mlp for b in blocks), classes(getattr(b.mlp, "norm", None) for b in blocks),
            classes(getattr(b, "attn", None) for b in blocks), classes(getattr(b, "ls1", None) for b in blocks),
            getattr(model, "cls_token", None) is not None, bool(getattr(model, "num_reg_tokens", 0)))


@functools.cache
def _tested_signatures() -> frozenset:
    return frozenset(_signature(n, _build(n)) for n in REPRESENTATIVES)


def _build(name: str) -> nn.Module:
    with hub_offline(), torch.device("meta"):
        return timm.create_model(name, pretrained=False)


def _removed(model: nn.Module, reduction: str) -> int:
    """MLP parameters the reduction removes, found by module name."""
    removed = 0
    for name, mlp in model.named_modules():
        match = _MLP_NAME.fullmatch(name)
        if not match:
            continue
        total = sum(p.numel() for p in mlp.parameters())
        if reduction == "grouped":
            removed += total if int(match.group(2)) % 2 else 0
        elif reduction in ("shallow", "thin"):
            hidden = mlp.fc2.in_features
            per_unit = (total - (mlp.fc2.bias.numel() if mlp.fc2.bias is not None else 0)) // hidden
            removed += (hidden - max(1, round(hidden * 0.5))) * per_unit
    return removed


def test_representatives_are_timm_models_of_the_claimed_families():
    known = set(timm.list_models(list(FAMILIES)))
    assert [n for n in REPRESENTATIVES if n not in known] == []
    assert {next(f for f in FAMILIES if fnmatch.fnmatch(n, f)) for n in REPRESENTATIVES} == set(FAMILIES)


@pytest.mark.parametrize("chunk", range(0, len(ALL_NAMES), CHUNK), ids=lambda start: f"names{start}+")
def test_every_claimed_name_has_a_tested_signature(chunk):
    names = ALL_NAMES[chunk:chunk + CHUNK]
    untested = {n: _signature(n, _build(n)) for n in names}
    assert {n: s for n, s in untested.items() if s not in _tested_signatures()} == {}


@pytest.mark.parametrize("name", _names())
def test_model_reduces_with_counts_that_add_up_or_is_refused(name):
    reference = _build(name)
    full = sum(p.numel() for p in reference.parameters())
    removed = {r: _removed(reference, r) for r in ("grouped", "shallow", "thin")}
    try:
        vitreduce.reduce(reference, "none")  # only marks the model: the copies below start from it
    except VitreduceError as err:
        assert re.search(REFUSED, str(err)), f"{name}: {err}"
        with pytest.raises(VitreduceError, match="is not a model vitreduce can reduce"):
            vitreduce.create_model(name, device="meta")
        return
    assert sum(p.numel() for p in reference.parameters()) == full
    for reduction, expected_removed in removed.items():
        model = vitreduce.reduce(copy.deepcopy(reference), reduction)
        assert sum(p.numel() for p in model.parameters()) == full - expected_removed, (name, reduction)


def test_architectures_tiny_study_runs_end_to_end(tmp_path):
    """studies/tiny/architectures.yaml (one seed, one epoch): every architecture x reduction trains, and the
    summary counts each as its own family's figures say."""
    spec = load_spec(Path(__file__).resolve().parents[1] / "studies" / "tiny" / "architectures.yaml",
                     ["seeds=[0]", "overrides.epochs=1", f"overrides.data.root={tmp_path / 'synth'}"])
    result = run_study(spec, tmp_path / "study", echo=lambda *_: None)
    summary = json.loads((tmp_path / "study" / "summary.json").read_text())["variants"]  # the file's contract
    reductions = ("baseline", "grouped-2-output", "shallow-0.5")  # grouped:scale=output (docs/reductions.md)
    variants = [f"{m}.{r}" for m in ("vit_s", "deit3_s", "swin_t", "eva02_s") for r in reductions]
    assert [k for k in summary if "." in k] == variants, result
    # The tiny Swin: a stage of two blocks (width 16) then a single-block stage (width 32), which keeps its MLP.
    assert [summary[f"swin_t.{r}"]["unique_mlps"] for r in reductions] == [3, 2, 3]
    assert [summary[f"eva02_s.{r}"]["unique_mlps"] for r in reductions] == [4, 2, 4]
    assert summary["swin_t.baseline"]["mlp_hidden"] == [64, 128]
    assert summary["swin_t.shallow-0.5"]["mlp_hidden"] == [32, 64]
    # Each architecture's variants profiled together; each ratio against its own architecture's baseline.
    assert {v: summary[v]["throughput"]["ratio_against"] for v in variants} == {
        v: f"{v.split('.')[0]}.baseline" for v in variants}
