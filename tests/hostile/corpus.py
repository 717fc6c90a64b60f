"""The fixed hostile-input corpus: one case per hostile input found in an adversarial review, as data.

A case is a command line with placeholders that test_corpus.py fills from a fresh workspace:
``{ckpt}`` a tiny vitreduce checkpoint (its header edited by ``header``), ``{data}`` the tiny dataset,
``{config}`` a train config (the tiny one with ``config`` merged in, or the bytes ``config_yaml`` makes
from it), ``{spec}`` a study spec (likewise ``spec`` / ``spec_yaml``), ``{out}`` a path that does not
exist yet, ``{truncated_pth}`` / ``{empty_pth}`` damaged pickle weights, and ``{tiny_args}`` the
``--model-arg`` flags of the tiny ViT.

``expect_error``: the input must be refused (exit 2, one clear line); otherwise exit 0 is fine too.
``isolated``: the input could exhaust memory or time, so the case runs in a subprocess under limits.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

THIS_FILE = "<path of this checkpoint>"  # replaced by the crafted file's own path in a header
TINY_ARGS = ("img_size=16", "patch_size=4", "embed_dim=32", "depth=4", "num_heads=2")


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    expect_error: bool = True
    isolated: bool = False
    not_in: tuple[str, ...] = ()  # text the message must not contain
    header: dict[str, Any] | None = None  # edits of {ckpt}'s header: key -> text, mapping (model_kwargs), None
    config: dict[str, Any] | None = None  # merged into the tiny train config written as {config}
    config_yaml: Callable[[dict], bytes] | None = None  # {config}'s bytes, from the tiny config tree
    spec: dict[str, Any] | None = None  # merged into the tiny study spec written as {spec}
    spec_yaml: Callable[[dict], bytes] | None = None  # {spec}'s bytes, from the tiny spec tree


# --- YAML made hostile -------------------------------------------------------------------------------


def _dump(tree: dict, without: str) -> str:
    return yaml.safe_dump({k: v for k, v in tree.items() if k != without}, sort_keys=False)


def billion_laughs(key: str) -> Callable[[dict], bytes]:
    """The tree with ``key`` set to 9 levels of 9 aliases each (9**9 strings once expanded)."""
    def make(tree: dict) -> bytes:
        levels = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
        levels += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
        return (_dump(tree, key) + "\n".join(levels) + f"\n{key}: *l9\n").encode()
    return make


def deep_nesting(key: str, depth: int = 50_000) -> Callable[[dict], bytes]:
    """The tree with ``key`` set to a list nested ``depth`` deep."""
    return lambda tree: (_dump(tree, key) + f"{key}: " + "[" * depth + "]" * depth + "\n").encode()


def duplicate_key(line: str) -> Callable[[dict], bytes]:
    """The tree, then ``line`` repeating one of its top-level keys."""
    return lambda tree: (yaml.safe_dump(tree, sort_keys=False) + line + "\n").encode()


def not_utf8(tree: dict) -> bytes:
    """The tree behind a Latin-1 comment: valid YAML in any encoding but UTF-8."""
    return "# r\u00e9sum\u00e9 of the settings\n".encode("latin-1") + yaml.safe_dump(tree).encode()


def binary(tree: dict) -> bytes:
    return bytes(range(256)) * 8 + b"\x00\xff\xfe"


# --- checkpoints that describe more than an architecture --------------------------------------------

HEADERS: dict[str, dict[str, Any]] = {
    "pretrained-url": {"model_kwargs": {"pretrained": True, "pretrained_cfg_overlay": {
        "url": "http://198.51.100.7/vit.pth", "hf_hub_id": None}}},
    "pretrained-file": {"model_kwargs": {"pretrained": True, "pretrained_cfg_overlay": {
        "file": THIS_FILE, "hf_hub_id": None}}},
    "pretrained-hub": {"model_kwargs": {"pretrained": True}},
    "hub-name": {"base_model": "hf-hub:timm/vit_tiny_patch16_224.augreg_in21k"},
    "checkpoint-path": {"model_kwargs": {"checkpoint_path": THIS_FILE}},
    "huge-dims": {"model_kwargs": {"embed_dim": 65536, "depth": 256}},
    "bad-json": {"model_kwargs": '{"embed_dim": 32,'},
    "kwargs-not-a-mapping": {"model_kwargs": "[16, 4]"},
    "kwargs-missing": {"model_kwargs": None},
    "non-vit-base": {"base_model": "resnet50"},
    "wrong-typed-kwargs": {"model_kwargs": {"embed_dim": "wide", "depth": 2.5}},
    "depth-over-fewer-blocks": {"model_kwargs": {"depth": 6}},  # the tensors hold 4 blocks
}

# Every command that reads a checkpoint's header (`reduce --weights` takes the architecture from a
# vitreduce header, so it refuses a hostile one like the others).
HEADER_READERS: dict[str, tuple[str, ...]] = {
    "eval": ("eval", "{ckpt}", "--data", "{data}", "--workers", "0", "--batch-size", "8", "--device", "cpu"),
    "inspect": ("inspect", "{ckpt}"),
    "sharpness": ("sharpness", "{ckpt}", "--data", "{data}", "--batches", "1", "--batch-size", "4", "--top-k", "1",
                  "--iters", "2", "--trace-samples", "0", "--device", "cpu", "--quiet"),
    "reduce-weights": ("reduce", "vit_tiny_patch16_224", "--weights", "{ckpt}", "--reduction", "grouped",
                       "{tiny_args}", "--out", "{out}.safetensors"),
    "train-init": ("train", "{config}", "--out", "{out}"),
    "profile": ("profile", "{ckpt}", "--repeats", "1", "--warmup", "0", "--no-memory", "--batch-size", "2",
                "--mode", "infer"),
}
# train-init's config: the tiny run, shaped like the checkpoint, starting from it.
INIT_FROM_CKPT = {"model": {"reduction": "none", "embed_dim": 32, "depth": 4, "init_checkpoint": "{ckpt}"}}


def edit_header(header: dict[str, str], edit: dict[str, Any], this_file: str) -> dict[str, str]:
    """``header`` with ``edit`` applied: text replaces an entry, a mapping updates the JSON object there
    (THIS_FILE standing for ``this_file``), None removes the entry."""
    header = dict(header)
    for key, value in edit.items():
        if value is None:
            header.pop(key, None)
        elif isinstance(value, dict):
            text = json.dumps({**json.loads(header[key]), **value})
            header[key] = text.replace(json.dumps(THIS_FILE), json.dumps(this_file))
        else:
            header[key] = value
    return header


def _header_case(name: str, edit: dict[str, Any], reader: str) -> Case:
    huge = name == "huge-dims"
    return Case(
        id=f"header-{name}-{reader}", argv=HEADER_READERS[reader], header=edit,
        config=INIT_FROM_CKPT if reader == "train-init" else None,
        # Built on the meta device, a described giant costs nothing to inspect.
        expect_error=not (huge and reader == "inspect"),
        isolated=huge and reader in ("eval", "sharpness", "train-init"),
    )


HEADER_CASES = [_header_case(name, edit, reader) for name, edit in HEADERS.items() for reader in HEADER_READERS]

# --- command lines -----------------------------------------------------------------------------------

TINY = ("vit_tiny_patch16_224", "{tiny_args}")
REDUCE_TINY = ("reduce", *TINY, "--out", "{out}.safetensors")

COMMAND_CASES = [
    Case("model-arg-pretrained-inspect", ("inspect", *TINY, "--model-arg", "pretrained=true")),
    Case("model-arg-pretrained-reduce", (*REDUCE_TINY, "--reduction", "none", "--model-arg", "pretrained=true")),
    Case("model-arg-unknown-inspect", ("inspect", *TINY, "--model-arg", "foo=1")),
    Case("model-arg-unknown-reduce", (*REDUCE_TINY, "--reduction", "none", "--model-arg", "foo=1")),
    Case("inspect-resnet50", ("inspect", "resnet50")),
    Case("reduction-empty-inspect", ("inspect", *TINY, "--reduction", "")),
    Case("reduction-empty-reduce", (*REDUCE_TINY, "--reduction", "")),
    Case("reduction-arabic-indic-digit", ("inspect", *TINY, "--reduction", "grouped:size=\u0662")),
    Case("reduction-fullwidth-digit", ("inspect", *TINY, "--reduction", "thin:ratio=\uff10.\uff15")),
    Case("reduction-shallow-seed-2**40", (*REDUCE_TINY, "--reduction", f"shallow:keep=random,seed={2**40}"),
         expect_error=False),
    Case("eval-workers-negative", ("eval", "{ckpt}", "--data", "{data}", "--workers", "-1", "--device", "cpu")),
    Case("weights-truncated-pth", (*REDUCE_TINY, "--reduction", "none", "--weights", "{truncated_pth}"),
         not_in=("could run code",)),
    Case("weights-empty-pth", (*REDUCE_TINY, "--reduction", "none", "--weights", "{empty_pth}"),
         not_in=("could run code",)),
    Case("data-synth-size-100000", ("data", "synth", "{out}", "--size", "100000"), isolated=True),
    Case("inspect-shallow-ratio-1e-9", ("inspect", *TINY, "--reduction", "shallow:ratio=1e-9")),
    Case("reduce-thin-ratio-1e-9", (*REDUCE_TINY, "--reduction", "thin:ratio=1e-9")),
    Case("inspect-img-size-0", ("inspect", *TINY, "--img-size", "0")),
    Case("inspect-swin-heads-longer-than-depths", ("inspect", "swin_tiny_patch4_window7_224", "--model-arg",
                                                   "depths=[2, 2]", "--model-arg", "num_heads=[3, 6, 12, 24]")),
    Case("reduce-scale-1e20-round-trip", (*REDUCE_TINY, "--reduction", "grouped:scale=1e20"), expect_error=False),
    Case("eval-crop-pct-nan", (*HEADER_READERS["eval"], "--crop-pct", "nan")),
    Case("eval-interpolation-unknown", (*HEADER_READERS["eval"], "--interpolation", "sinc")),
    Case("eval-header-classes-not-a-list", HEADER_READERS["eval"], header={"classes": '{"a": 0}'}),
    Case("eval-header-classes-wrong-names", HEADER_READERS["eval"], header={"classes": '["a", "b", "c", "d"]'}),
    Case("sharpness-header-classes-reordered", HEADER_READERS["sharpness"],
         header={"classes": '["c3_checker", "c2_stripes_diag", "c1_stripes_v", "c0_stripes_h"]'}),
    Case("eval-header-preprocessing-crop-5", HEADER_READERS["eval"],
         header={"eval_preprocessing": '{"crop_pct": 5}'}),
    Case("eval-header-preprocessing-extra-key", HEADER_READERS["eval"],
         header={"eval_preprocessing": '{"crop_pct": 0.9, "url": "http://198.51.100.7/x"}'}),
    Case("report-spike-threshold-nan", ("report", "{out}", "--spike-threshold", "nan")),
]

# --- train configs -----------------------------------------------------------------------------------

TRAIN = ("train", "{config}", "--out", "{out}")
NAN, INF = float("nan"), float("inf")

CONFIG_CASES = [
    Case("config-model-name-resnet50", TRAIN, config={"model": {"name": "resnet50"}}),
    Case("config-heads-do-not-divide-width", TRAIN, config={"model": {"embed_dim": 16, "num_heads": 3}}),
    Case("config-betas-1.5", TRAIN, config={"optimizer": {"betas": [1.5, 0.999]}}),
    Case("config-betas-nan", TRAIN, config={"optimizer": {"betas": [NAN, 0.999]}}),
    Case("config-seed-2**40", TRAIN, config={"seed": 2**40}, expect_error=False),
    Case("config-shallow-seed-2**40", TRAIN, expect_error=False,
         config={"model": {"reduction": f"shallow:keep=random,seed={2**40}"}}),
    Case("config-epochs-10**24", TRAIN, config={"epochs": 10**24}),
    Case("config-epochs-10**24-set", (*TRAIN, "--set", "epochs=1.0e+24")),
    Case("config-epochs-true", TRAIN, config={"epochs": True}),
    Case("config-weight-decay-inf", TRAIN, config={"optimizer": {"weight_decay": INF}}),
    Case("config-warmup-lr-inf", TRAIN, config={"schedule": {"warmup_lr": INF}}),
    Case("config-duplicate-key", TRAIN, config_yaml=duplicate_key("epochs: 2")),
    Case("config-not-utf8", TRAIN, config_yaml=not_utf8),
    Case("config-binary", TRAIN, config_yaml=binary),
    Case("config-billion-laughs", TRAIN, config_yaml=billion_laughs("seed"), isolated=True),
    Case("config-deep-nesting", TRAIN, config_yaml=deep_nesting("seed"), isolated=True),
]

# --- study specs -------------------------------------------------------------------------------------

STUDY = ("study", "{spec}", "--out", "{out}")

SPEC_CASES = [
    Case("spec-seeds-2**40", STUDY, spec={"seeds": [2**40]}, expect_error=False),
    Case("spec-epochs-10**24", STUDY, spec={"overrides": {"epochs": 10**24}}),
    Case("spec-shallow-seed-2**40", STUDY, expect_error=False, spec={"variants": [
        {"name": "shallow", "overrides": {"model.reduction": f"shallow:keep=random,seed={2**40}"}}]}),
    Case("spec-overrides-not-a-mapping", STUDY, spec={"overrides": NAN}),  # found by test_properties
    Case("spec-throughput-device-tpu", (*STUDY, "--dry-run"), spec={"throughput": {"device": "tpu"}}),
    # A dry run imports no torch: what it checks without timm is still refused, and --costs checks the rest.
    Case("spec-dry-run-model-hub-id", (*STUDY, "--dry-run"), spec={"overrides": {"model.name": "hf-hub:x/vit"}}),
    Case("spec-dry-run-betas-1.5", (*STUDY, "--dry-run"), spec={"overrides": {"optimizer.betas": [0.9, 1.5]}}),
    Case("spec-dry-run-costs-model-typo", (*STUDY, "--dry-run", "--costs"),
         spec={"overrides": {"model.name": "vit_tiny_patch16_244"}}),
    Case("spec-costs-without-dry-run", (*STUDY, "--costs")),
    Case("spec-duplicate-key", STUDY, spec_yaml=duplicate_key("name: other")),
    Case("spec-not-utf8", STUDY, spec_yaml=not_utf8),
    Case("spec-binary", STUDY, spec_yaml=binary),
    Case("spec-billion-laughs", STUDY, spec_yaml=billion_laughs("seeds"), isolated=True),
    Case("spec-deep-nesting", STUDY, spec_yaml=deep_nesting("seeds"), isolated=True),
]

CASES = HEADER_CASES + COMMAND_CASES + CONFIG_CASES + SPEC_CASES
