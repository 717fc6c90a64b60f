"""What a model description may say, checked before anything is built.

A description (a timm base name and timm kwargs) reaches vitreduce from a checkpoint header, a train
config, ``--model-arg`` and ``create_model(**kwargs)``; every one passes ``check_architecture``:
- the base name is one of timm's own architecture names (never a hub id, URL or path) whose blocks
  vitreduce can reduce (timm's vit_*, deit_*, deit3_*, eva*, swin*), checked by building it on the meta device;
- the kwargs are on the allow-list ``ArchitectureKwargs`` with their types and ranges. Whatever could
  make timm load weights or reach a network or a path (pretrained, pretrained_cfg, its overlay,
  checkpoint_path, cache_dir) is refused: a description says what to build, never where to fetch it;
- the architecture is consistent (num_heads divides embed_dim, patch_size divides img_size);
- its parameter count, computed on the meta device, is at most ``VITREDUCE_MAX_PARAMS``.
``hub_offline()`` turns the Hugging Face hub off while timm builds, so a path missed here cannot download.
"""
from __future__ import annotations

import difflib
import functools
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from vitreduce.config_tree import explain_error, short_repr
from vitreduce.errors import VitreduceError

if TYPE_CHECKING:
    from torch import nn

# timm and torch are imported where a model is built or looked up, not here: the kwargs checks (check_kwargs)
# serve a config read without torch, and timm's first import then comes after this module is whole (vitreduce's
# package registers its reduced names with timm then, vitreduce/__init__.py).

MAX_PARAMS_ENV = "VITREDUCE_MAX_PARAMS"
DEFAULT_MAX_PARAMS = 2_000_000_000
# timm name patterns of the model families vitreduce claims (tests/test_zoo.py builds every one of them)
FAMILIES = ("vit_*", "deit_*", "deit3_*", "eva_*", "eva02_*", "swin_*", "swinv2_*")
SUPPORTED = ("timm's vit_*, deit_*, deit3_*, eva* and swin* models (transformer blocks, in one stage or several, "
             "with an Mlp, GluMlp/SwiGLUPacked or SwiGLU MLP)")
WEIGHTS_HINT = ("to start from weights, reduce a local file with `vitreduce reduce BASE --weights FILE --reduction "
                "SPEC --out FILE` (or set model.init_checkpoint in a train config)")
# kwarg -> what it could make timm do. None (and pretrained=False) is inert and dropped.
FETCHING = {
    "pretrained": "download weights from a model hub or URL",
    "pretrained_cfg": "fetch weights named by a pretrained config (a URL, hub id or file)",
    "pretrained_cfg_overlay": "fetch weights from a URL, hub id or file",
    "pretrained_model_args": "rebuild from a fetched pretrained config",
    "checkpoint_path": "load weights from an arbitrary file",
    "cache_dir": "write a download cache",
}
RUNTIME = ("device", "dtype")  # where the model is built, not what it is: accepted by create_model, never recorded


def _size(low: int, high: int):
    """An image or patch size: one whole number, or [height, width], each in [low, high]."""

    def check(value: Any) -> Any:
        pair = list(value) if isinstance(value, list | tuple) else [value]
        if len(pair) not in (1, 2) or not all(type(v) is int and low <= v <= high for v in pair):
            raise ValueError(f"must be a whole number from {low} to {high}, or [height, width] of them")
        return value

    return Annotated[Any, AfterValidator(check)]


_Rate = Annotated[float, Field(ge=0, lt=1)]
_Count = Annotated[int, Field(ge=1, le=1024)]


class ArchitectureKwargs(BaseModel):
    """The timm kwargs a model description may hold (VisionTransformer's structural options); unset
    or null keeps the named model's value."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    img_size: _size(1, 8192) = None
    patch_size: _size(1, 1024) = None
    in_chans: int | None = Field(None, ge=1, le=1024)
    num_classes: int | None = Field(None, ge=0, le=1_000_000)  # 0: no classifier head
    global_pool: Literal["", "avg", "avgmax", "max", "token", "map", "prr"] | None = None
    embed_dim: int | None = Field(None, ge=1, le=65536)
    depth: int | None = Field(None, ge=1, le=1024)
    depths: list[_Count] | None = Field(None, min_length=1, max_length=16)  # per stage
    num_heads: _Count | list[_Count] | None = None  # a list: one per stage (Swin)
    window_size: _size(1, 1024) = None  # Swin's attention window
    mlp_ratio: float | None = Field(None, gt=0, le=64)
    qkv_bias: bool | None = None
    qk_norm: bool | None = None
    proj_bias: bool | None = None
    scale_attn_norm: bool | None = None
    scale_mlp_norm: bool | None = None
    scale_mlp: bool | None = None  # EVA: a norm over the MLP's hidden units
    swiglu_mlp: bool | None = None  # EVA: a SwiGLU MLP
    init_values: float | None = Field(None, gt=0, le=10)  # LayerScale; null: none
    class_token: bool | None = None
    no_embed_class: bool | None = None
    reg_tokens: int | None = Field(None, ge=0, le=1024)
    pre_norm: bool | None = None
    final_norm: bool | None = None
    fc_norm: bool | None = None
    dynamic_img_size: bool | None = None
    dynamic_img_pad: bool | None = None
    drop_rate: _Rate | None = None
    pos_drop_rate: _Rate | None = None
    patch_drop_rate: _Rate | None = None
    proj_drop_rate: _Rate | None = None
    attn_drop_rate: _Rate | None = None
    drop_path_rate: _Rate | None = None
    weight_init: Literal["", "skip", "reset", "jax", "jax_nlhb", "moco"] | None = None
    fix_init: bool | None = None


ALLOWED = tuple(ArchitectureKwargs.model_fields)


def check_kwargs(kwargs: Any, source: str = "timm kwargs") -> dict[str, Any]:
    """The kwargs when every one is on the allow-list with a valid value (tuples become lists, so the
    result is JSON-safe); else one VitreduceError naming each problem, prefixed by ``source`` (if any)."""
    where = f"{source}: " if source else ""
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise VitreduceError(f"{where}expected a mapping of timm kwargs, got {type(kwargs).__name__}")
    for key, value in kwargs.items():
        if key in FETCHING and value is not None and value is not False:
            raise VitreduceError(
                f"{where}{key}={short_repr(value, 80)} is refused: it could make timm {FETCHING[key]}; vitreduce "
                f"builds a model from its architecture alone and never downloads; {WEIGHTS_HINT}"
            )
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items() if k not in FETCHING}
    try:
        ArchitectureKwargs.model_validate(kwargs)
    except ValidationError as err:
        problems = [explain_error(e, lambda _loc: list(ALLOWED), loc=[str(e["loc"][0])], unknown="unknown timm kwarg")
                    for e in err.errors()]
        raise VitreduceError(where + "; ".join(dict.fromkeys(problems))) from None
    return kwargs


def split_runtime(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(device/dtype, the rest) of ``create_model``'s kwargs; a bad device or dtype is refused here."""
    import torch

    runtime = {k: kwargs[k] for k in RUNTIME if kwargs.get(k) is not None}
    if "device" in runtime:
        try:
            torch.device(runtime["device"])
        except (RuntimeError, TypeError) as err:
            raise VitreduceError(f"device={runtime['device']!r} is not a torch device ({err})") from None
    dtype = runtime.get("dtype")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise VitreduceError(f"dtype={dtype!r} must be a floating torch.dtype, e.g. torch.float32")
    return runtime, {k: v for k, v in kwargs.items() if k not in RUNTIME}


def check_name_form(name: Any) -> str:
    """``name`` when it has the form of a timm architecture name: never a hub id, URL or path (no timm needed)."""
    if not isinstance(name, str) or not name:
        raise VitreduceError(f"the base model must be a timm model name such as vit_base_patch16_224, got {name!r}")
    if any(mark in name for mark in (":", "/", "\\")) or name.startswith("."):
        raise VitreduceError(
            f"{name!r} is a hub id, URL or path: vitreduce builds only timm's own architecture names (e.g. "
            f"vit_base_patch16_224) and never fetches a model; {WEIGHTS_HINT}"
        )
    return name


def check_base_name(name: Any) -> str:
    """``name`` when it is a timm architecture name vitreduce can reduce; never looked up on a hub."""
    import timm

    check_name_form(name)
    if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
        # Suggest only names vitreduce can build: a near miss of a ViT is not a ConViT or a SAM encoder.
        close = difflib.get_close_matches(name, timm.list_models(list(FAMILIES)), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"vitreduce builds {SUPPORTED}"
        raise VitreduceError(f"unknown timm model {name!r}; {hint}")
    _base_shape(name)  # the family check
    return name


@functools.lru_cache(maxsize=64)
def _base_shape(name: str) -> dict[str, Any]:
    """embed_dim, num_heads, img_size and patch_size of the named model at its defaults (built on meta), and
    whether it is a plain VisionTransformer; refuses a model whose blocks vitreduce cannot reduce."""
    from vitreduce.reduction.blocks import block_stages
    from vitreduce.reduction.gated import in_features
    from vitreduce.reduction.surgery import vit_blocks

    model = _meta_build(name, {})
    try:
        blocks = vit_blocks(model)
    except VitreduceError as err:
        raise VitreduceError(f"{name} is not a model vitreduce can reduce: {err}; supported: {SUPPORTED}") from None
    embed = getattr(model, "patch_embed", None)
    attn = getattr(blocks[0], "attn", None)
    return {"embed_dim": in_features(blocks[0].mlp), "num_heads": getattr(attn, "num_heads", None),
            "img_size": getattr(embed, "img_size", None), "patch_size": getattr(embed, "patch_size", None),
            "plain_vit": type(model).__name__ == "VisionTransformer", "stages": len(block_stages(model))}


def base_shape(name: str) -> dict[str, Any]:
    """The named model's defaults (``_base_shape``), its name checked first (``check_base_name``)."""
    return _base_shape(check_base_name(name))


def _meta_build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """The model on the meta device: shapes only, no memory, no arithmetic."""
    import timm
    import torch

    try:
        with hub_offline(), torch.device("meta"):
            return timm.create_model(name, pretrained=False, **kwargs)
    except VitreduceError:
        raise
    except Exception as err:  # noqa: BLE001 (timm's own assertion is the clearest account of the conflict)
        detail = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise VitreduceError(f"timm cannot build {name} with {json.dumps(kwargs, sort_keys=True)}: {detail}") from None


def check_consistency(name: str, kwargs: dict[str, Any]) -> None:
    """Refuse shapes that do not fit together, with the values that would."""
    shape = {**_base_shape(name), **{k: v for k, v in kwargs.items() if v is not None}}
    width, heads = shape["embed_dim"], shape["num_heads"]
    if isinstance(heads, list):  # a stage-based model doubles its width at each stage
        stages = len(kwargs["depths"]) if kwargs.get("depths") else shape["stages"]
        if len(heads) != stages:  # timm would use the first len(depths) and ignore the rest
            raise VitreduceError(f"num_heads lists {len(heads)} stage(s) but the model has {stages} (depths "
                                 f"{kwargs.get('depths') or 'of ' + name}); give one head count per stage")
        for stage, count in enumerate(heads):
            if (width * 2**stage) % count:
                raise VitreduceError(f"num_heads[{stage}] = {count} does not divide stage {stage}'s width "
                                     f"{width * 2**stage} (embed_dim {width} x 2^{stage}); change num_heads or "
                                     "embed_dim")
        heads = None
    if heads and width % heads:
        divisors = [d for d in range(1, min(width, 1024) + 1) if width % d == 0]
        raise VitreduceError(f"num_heads {heads} does not divide embed_dim {width}; use one of "
                             f"{', '.join(map(str, divisors[-12:]))} (or change embed_dim)")
    if kwargs.get("mlp_ratio") is not None and int(width * kwargs["mlp_ratio"]) < 1:
        raise VitreduceError(f"mlp_ratio {kwargs['mlp_ratio']} leaves no hidden units at embed_dim {width}")
    image, patch = _pair(shape["img_size"]), _pair(shape["patch_size"])
    padded = kwargs.get("dynamic_img_pad")  # timm pads the image up to whole patches itself
    if image and patch and not padded and any(i % p for i, p in zip(image, patch, strict=True)):
        raise VitreduceError(f"img_size {list(image)} is not a multiple of patch_size {list(patch)}; "
                             "choose sizes that divide (e.g. img_size 224 with patch_size 16)")


def _pair(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    return tuple(value) * (2 // len(value)) if isinstance(value, list | tuple) else (value, value)


def max_params() -> int:
    """The parameter limit: ``VITREDUCE_MAX_PARAMS`` when set, else 2,000,000,000."""
    text = os.environ.get(MAX_PARAMS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PARAMS
    try:
        limit = int(text.replace("_", ""))
    except ValueError:
        limit = 0
    if limit < 1:
        raise VitreduceError(f"environment variable {MAX_PARAMS_ENV}={text!r} must be a positive whole number")
    return limit


@functools.lru_cache(maxsize=64)
def _parameter_count(name: str, kwargs_json: str) -> int:
    from vitreduce.reduction.params import count_unique
    from vitreduce.reduction.surgery import vit_blocks

    model = _meta_build(name, json.loads(kwargs_json))
    vit_blocks(model)
    return count_unique(model.parameters())


def check_size(name: str, kwargs: dict[str, Any]) -> int:
    """The described model's parameter count (from a meta-device build); refused beyond ``max_params()``."""
    count = _parameter_count(name, json.dumps(kwargs, sort_keys=True))
    limit = max_params()
    if count > limit:
        raise VitreduceError(
            f"{name} as described has {count:,} parameters ({count * 4 / 2**30:,.1f} GiB in fp32), more than the "
            f"limit of {limit:,}; check embed_dim, depth and mlp_ratio, or raise the limit with the environment "
            f"variable {MAX_PARAMS_ENV} (e.g. {MAX_PARAMS_ENV}={count})"
        )
    return count


def check_architecture(name: Any, kwargs: Any, source: str = "timm kwargs") -> dict[str, Any]:
    """All the checks above, cheapest first; returns the kwargs (JSON-safe) to build and record.

    Args:
        name: the timm base model name.
        kwargs: architecture kwargs (no device/dtype: see ``split_runtime``).
        source: names where the kwargs came from in errors (e.g. "--model-arg").
    """
    kwargs = check_kwargs(kwargs, source)
    check_base_name(name)
    check_consistency(name, kwargs)
    check_size(name, kwargs)
    return kwargs


@contextmanager
def hub_offline() -> Iterator[None]:
    """The Hugging Face hub switched off (HF_HUB_OFFLINE=1) while timm builds a model, then restored."""
    constants = sys.modules.get("huggingface_hub.constants")
    old_env, old_flag = os.environ.get("HF_HUB_OFFLINE"), getattr(constants, "HF_HUB_OFFLINE", None)
    os.environ["HF_HUB_OFFLINE"] = "1"
    if constants is not None:
        constants.HF_HUB_OFFLINE = True  # read at call time; the environment only at import
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env
        if constants is not None:
            constants.HF_HUB_OFFLINE = old_flag
