"""The figure sections of benchmarks/gpu_check.py: throughput and peak memory of the paper's variants
(vitreduce.efficiency.profile_variants, eager and compiled), one HVP against one training step, and the
data loader's JPEG throughput against torchvision.io.decode_jpeg on the device.
"""
from __future__ import annotations

import contextlib
import functools
import statistics
import time

import numpy as np
import torch
from gpu_check_correct import Check, Skipped
from PIL import Image

import vitreduce
from vitreduce.data.config import AugmentConfig, DataConfig
from vitreduce.data.loaders import build_train_loader
from vitreduce.device import available_cores, synchronize
from vitreduce.efficiency.profiler import profile_variants
from vitreduce.efficiency.workload import TrainStep
from vitreduce.reduction.params import unique_parameters
from vitreduce.sharpness.hessian import hessian_vector_product
from vitreduce.sharpness.measures import analysis_mode, batch_losses

MODELS = {"vit_base_patch16_224": "ViT-B/16", "vit_small_patch16_224": "ViT-S/16"}
VARIANTS = ["none", "grouped", "shallow"]
DRY_MODEL = dict(model_kwargs=dict(patch_size=4, embed_dim=32, depth=2, num_heads=2), img_size=16, num_classes=5)


@contextlib.contextmanager
def dry_compile(dry: bool):
    """In a dry run torch.compile uses the aot_eager backend: the same dynamo and autograd tracing in seconds."""
    if not dry:
        yield
        return
    original = torch.compile
    torch.compile = functools.partial(original, backend="aot_eager")
    try:
        yield
    finally:
        torch.compile = original


def _profile(check: Check, compile: bool) -> dict:
    rows, headlines = [], []
    models = {"vit_tiny_patch16_224": "tiny ViT"} if check.dry else MODELS
    last = 0.0  # seconds the previous model took: the next one starts only if about as much time is left
    for name, short in models.items():
        if check.left() < max(10.0, 1.2 * last):
            headlines.append(f"{short}: not run, {check.left():.0f} s of the section's budget left")
            continue
        start = time.perf_counter()
        extra = DRY_MODEL if check.dry else {}
        with dry_compile(check.dry):
            profiles = profile_variants(
                name, VARIANTS, device=str(check.device), precision="bf16", batch_size=4 if check.dry else 256,
                mode="both", compile=compile, repeats=2 if check.dry else 5, warmup=1 if check.dry else 2,
                memory=check.cuda and not compile, **extra)
        base = profiles[0]
        for p in profiles:
            rows.append({"model": short, "variant": p.reduction, "compiled": compile, "batch": p.batch_size,
                         "infer_img_s": p.infer_img_s, "train_img_s": p.train_img_s,
                         "infer_ratio": p.infer_ratio, "train_ratio": p.train_ratio,
                         "mac_bound": base.macs_total / p.macs_total,
                         "peak_infer_mb": p.peak_mem_infer_mb, "peak_train_mb": p.peak_mem_train_mb})
        shallow, last = rows[-1], time.perf_counter() - start
        headlines.append(f"{short} bf16 b{base.batch_size} {'compiled' if compile else 'eager'}: base "
                         f"{base.train_img_s:.0f} train / {base.infer_img_s:.0f} infer img/s; shallow/base "
                         f"{shallow['train_ratio']:.2f} train, {shallow['infer_ratio']:.2f} infer "
                         f"(MAC bound {shallow['mac_bound']:.2f})")
    notes = [] if check.cuda and not compile else [
        "peak memory: " + ("measured in the eager section only (same workload)" if compile else
                           "skipped: CUDA memory needs a GPU (dry run)")]
    if check.dry and compile:
        notes.append("dry run: torch.compile with backend aot_eager (inductor on a GPU)")
    return {"rows": rows, "headlines": headlines, "notes": notes}


def throughput_eager(check: Check) -> dict:
    """ViT-B/16 and ViT-S/16, none / grouped / shallow, bf16, batch 256: img/s and peak CUDA memory."""
    return _profile(check, compile=False)


def throughput_compiled(check: Check) -> dict:
    """The same with torch.compile (compilation in the warm-up runs, not timed)."""
    return _profile(check, compile=True)


def _median_seconds(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up: allocator, AdamW state, kernels
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def hvp_time(check: Check) -> dict:
    """One HVP (fp32, eval, unfused attention: what an analysis runs) against one fp32 training step of
    ViT-B/16, grouped, on the same batch of 64."""
    torch.manual_seed(0)
    kwargs = {**DRY_MODEL["model_kwargs"], "img_size": DRY_MODEL["img_size"],
              "num_classes": DRY_MODEL["num_classes"]} if check.dry else {}
    name = "vit_tiny_patch16_224" if check.dry else "vit_base_patch16_224"
    model = vitreduce.create_model(name, reduction="grouped", **kwargs).to(check.device)
    size, batch = (16, 4) if check.dry else (224, 64)
    images = torch.randn(batch, 3, size, size, device=check.device)  # (B, C, H, W)
    labels = torch.randint(0, model.num_classes, (batch,), device=check.device)
    params = list(unique_parameters(model, trainable_only=True))
    vector = [torch.randn_like(p) for p in params]
    step = TrainStep(model, "fp32")

    def hvp():
        with analysis_mode(model):
            hessian_vector_product(batch_losses(model, [(images, labels)]), params, vector)

    repeats = 2 if check.dry else 5
    train_s = _median_seconds(lambda: step(images, labels), check.device, repeats)
    hvp_s = _median_seconds(hvp, check.device, repeats)
    row = {"model": name, "reduction": "grouped", "batch": batch, "train_step_s": train_s, "hvp_s": hvp_s,
           "hvp_over_train": hvp_s / train_s}
    return {"rows": [row], "headlines": [f"HVP {hvp_s * 1e3:.1f} ms = {hvp_s / train_s:.2f}x a training step"]}


# ---- data loading -------------------------------------------------------------------------------------


def write_jpegs(root, per_class: int, size: tuple[int, int]) -> None:
    """An ImageFolder of smooth random JPEGs (photo-like compressibility) at ``size`` (W, H), 2 classes."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", 2)):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
                small.resize(size, Image.BILINEAR).save(folder / f"{i:05d}.jpg", quality=90)


def _loader_rate(check: Check, root, cores: int) -> tuple[float, int]:
    data = DataConfig(root=str(root), batch_size=8 if check.dry else 256, workers=0 if check.dry else cores)
    loader = build_train_loader(data, AugmentConfig(repeated_aug=1), 32 if check.dry else 224, 2, seed=0)
    loader.set_epoch(0)
    images, start = 0, None
    for batch in loader:
        if start is None:  # from the first batch on: the workers' start is not throughput
            start = time.perf_counter()
            continue
        images += len(batch.images)
    return images / (time.perf_counter() - start), data.workers


def _device_decode_rate(check: Check, root) -> tuple[float, float]:
    import torchvision.io as tio
    from torchvision.transforms.v2 import functional as TF

    files = sorted((root / "train").rglob("*.jpg"))
    raw = [tio.read_file(str(f)) for f in files]
    batch = 64

    def decode(resize: bool):
        for i in range(0, len(raw), batch):
            images = tio.decode_jpeg(raw[i:i + batch], device=check.device)
            if resize:
                [TF.resized_crop(im, 0, 0, im.shape[1] // 2, im.shape[2] // 2, [224, 224]) for im in images]

    return tuple(len(raw) / _median_seconds(lambda r=resize: decode(r), check.device, 2) for resize in (False, True))


def data_loading(check: Check) -> dict:
    """vitreduce's train loader (timm's RandAugment pipeline, all cores) on a generated JPEG folder against
    torchvision.io.decode_jpeg (plus a crop-resize) on the device."""
    root = check.out / "jpegs"
    if not root.exists():
        write_jpegs(root, 16 if check.dry else 1280, (64, 48) if check.dry else (500, 375))
    loader_rate, workers = _loader_rate(check, root, available_cores())
    decode, decode_crop = _device_decode_rate(check, root)
    row = {"loader_img_s": loader_rate, "workers": workers, "image_size": "64x48" if check.dry else "500x375",
           "decode_device": str(check.device), "decode_jpeg_img_s": decode,
           "decode_jpeg_crop_resize_img_s": decode_crop}
    notes = [] if check.cuda else ["torchvision.io.decode_jpeg on a GPU: skipped (needs CUDA); timed on the CPU "
                                   "instead, to keep the code path checked"]
    return {"rows": [row], "notes": notes,
            "headlines": [f"loader {loader_rate:.0f} img/s with {workers} workers; decode_jpeg on {check.device} "
                          f"{decode:.0f} img/s ({decode_crop:.0f} with a crop-resize)"]}


__all__ = ["Skipped", "data_loading", "hvp_time", "throughput_compiled", "throughput_eager"]
