"""Memory of a training or inference step: the exact static part and the measured peak.

Static (exact, no run needed): bytes of weights, gradients and AdamW state over unique tensors,
so an MLP shared by two blocks counts once.

Peak (measured): each variant runs in a fresh process (``python -m vitreduce.efficiency.memory``), so no
other model, optimizer or cached block of the parent is counted and the variants cannot disturb
each other.
- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was
  allocated before the model was moved to the GPU: weights, batch, activations (+ gradients and
  AdamW state in train), workspace. Excludes the CUDA context and cached-but-free blocks.
- CPU: the process's resident high-water mark (Linux ``VmHWM``, reset through
  ``/proc/self/clear_refs`` just before the step) minus its resident size before the model was
  built. Before that baseline a tiny ViT runs the same ops once, so the code pages and thread pools
  that the first step loads are not counted. The process runs with glibc's
  ``MALLOC_MMAP_THRESHOLD_=65536``: every block of 64 KiB or more is its own mapping, returned to
  the OS when freed, so RSS follows live tensors instead of the heap glibc keeps (without it the
  peak depended on what ran before and varied by up to 10% between identical runs; with it, by
  under 0.1%). Freed small blocks are handed back (``malloc_trim``) before each reset. Includes
  weights, batch, activations (+ gradients and AdamW state in train) and allocator overhead.
  Where the high-water mark cannot be reset (not Linux), ``ru_maxrss`` is used and the figure also
  includes the transient of building the model.
The AdamW state is allocated before the measured training step (one step over zero gradients), so
one step shows the steady-state peak.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import json
import math
import os
import resource
import signal
import subprocess
import sys
from typing import Any, TypedDict

import torch
from torch import nn

from vitreduce.device import Precision
from vitreduce.efficiency.workload import StepKind, TrainStep, build_model, infer_step, make_batch
from vitreduce.errors import VitreduceError
from vitreduce.reduction.params import unique_parameters

MB = 1_000_000  # figures are reported in MB = 10^6 bytes
_ADAMW_MOMENTS = 2  # exp_avg and exp_avg_sq, each shaped and typed like its parameter
_ADAMW_STEP_BYTES = 4  # AdamW's per-parameter `step` is a float32 scalar tensor
_MMAP_THRESHOLD = 65536  # bytes: larger blocks are mmapped, so freeing them lowers RSS at once
_USER_ERROR_EXIT = 3  # child exit status: a user-fixable error (e.g. the batch does not fit), as JSON

CUDA_METHOD = "torch.cuda.max_memory_allocated in a fresh process: weights, batch, activations (+ grads, AdamW state)"
CPU_METHOD = ("peak RSS of a fresh process (blocks >= 64 KiB mmapped) minus its RSS before building the model: "
              "weights, batch, activations (+ grads, AdamW state) and allocator overhead")


class MemoryJob(TypedDict):
    """One variant's measurement, sent to the child process as JSON."""

    model_name: str
    model_kwargs: dict[str, Any]  # timm kwargs, num_classes and img_size included
    reduction: str  # a reduction spec's canonical text
    device: str
    precision: Precision
    batch_size: int
    modes: list[StepKind]  # the steps to measure
    compile: bool
    threads: int


def static_memory(model: nn.Module) -> dict[str, int]:
    """Exact bytes of a training step's static state, each shared tensor counted once.

    Args:
        model: any module (the meta device works: only shapes and dtypes are read).

    Returns:
        ``weights_bytes`` (unique parameters and buffers), ``grads_bytes`` (one gradient per unique
        trainable parameter, in its dtype) and ``optimizer_bytes`` (AdamW: two moments per unique
        trainable parameter in its dtype plus a float32 step counter per tensor).
    """
    params = list(unique_parameters(model))
    trainable = [p for p in params if p.requires_grad]
    buffers = {id(b): b for b in model.buffers()}.values()
    weights = sum(t.numel() * t.element_size() for t in params) + sum(b.numel() * b.element_size() for b in buffers)
    grads = sum(p.numel() * p.element_size() for p in trainable)
    optimizer = sum(_ADAMW_MOMENTS * p.numel() * p.element_size() + _ADAMW_STEP_BYTES for p in trainable)
    return {"weights_bytes": weights, "grads_bytes": grads, "optimizer_bytes": optimizer}


def estimate_activation_bytes(model: nn.Module, batch_size: int, train: bool) -> int:
    """A rough upper estimate of activation memory, from one forward pass on the meta device.

    Training keeps every layer's output for backward: the sum of all leaf-module outputs plus the
    attention score and probability matrices (the unfused path's worst case). Inference holds a
    few tensors at a time: four times the largest one. Counted in float32.

    Args:
        model: the model built on the meta device.
        batch_size: images per step.
        train: estimate a training step (else inference).
    """
    outputs: dict[int, torch.Tensor] = {}  # by identity: an Identity's output is its input, counted once
    sizes: list[int] = []

    def leaf_hook(_module, _inputs, output):
        for tensor in output if isinstance(output, tuple | list) else (output,):
            if isinstance(tensor, torch.Tensor) and id(tensor) not in outputs:
                outputs[id(tensor)] = tensor  # kept alive so ids are not reused (meta: no memory)
                sizes.append(tensor.numel() * 4)

    def attention_hook(module, inputs, _output):
        batch, tokens = inputs[0].shape[:2]  # (B, T, C)
        sizes.append(2 * batch * module.num_heads * tokens * tokens * 4)  # scores and probabilities (B, H, T, T)

    handles = []
    for module in model.modules():
        if hasattr(module, "qkv") and hasattr(module, "num_heads"):
            handles.append(module.register_forward_hook(attention_hook))
        elif not any(True for _ in module.children()):
            handles.append(module.register_forward_hook(leaf_hook))
    embed = model.patch_embed
    images = torch.empty(batch_size, embed.proj.in_channels, *embed.img_size, device="meta")
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return sum(sizes) if train else 4 * max(sizes, default=0)


def available_ram_bytes() -> int | None:
    """RAM available to a new allocation (Linux MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


# --------------------------------------------------------------------------------------------------
# Peak memory, measured in a fresh process per variant


def measure_peak_memory(job: MemoryJob) -> dict[str, Any]:
    """Run one variant in a fresh ``python -m vitreduce.efficiency.memory`` process and return its peak memory.

    Args:
        job: what to build and which steps to measure.

    Returns:
        ``{"infer_bytes": int | None, "train_bytes": int | None, "method": str}``.
    """
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(_MMAP_THRESHOLD)}  # read by glibc at start-up
    proc = subprocess.run(
        [sys.executable, "-m", "vitreduce.efficiency.memory"], input=json.dumps(job), capture_output=True, text=True,
        check=False, env=env,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == _USER_ERROR_EXIT or (proc.returncode == 0 and lines):
        result = json.loads(lines[-1])
        if "error" in result:
            raise VitreduceError(result["error"])
        return result
    if proc.returncode == -signal.SIGKILL:
        raise VitreduceError(
            f"the memory measurement of {job['reduction']!r} was killed, most likely out of memory; "
            "use a smaller --batch-size"
        )
    tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
    raise RuntimeError(f"memory measurement of {job['reduction']!r} failed (exit {proc.returncode}):\n{tail}")


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _max_rss_bytes() -> int:
    """The process's resident high-water mark since it started (macOS reports bytes, Linux KiB)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _rss_bytes() -> int:
    kb = _status_kb("VmRSS")
    if kb is None:  # not Linux: the high-water mark is all there is
        return _max_rss_bytes()
    return kb * 1024


def _trim_heap() -> None:
    """Collect garbage and hand freed heap back to the OS, so RSS is close to live memory."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc: RSS also counts freed heap
            ctypes.CDLL(name).malloc_trim(0)


class _PeakMeter:
    """Peak memory since ``reset()``, relative to a baseline taken at construction."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            self.baseline = torch.cuda.memory_allocated(device)
        else:
            _trim_heap()
            self.baseline = _rss_bytes()
        self.resettable = device.type == "cuda" or self._reset_hwm()

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # Linux >= 4.0: reset VmHWM to the current RSS
            return _status_kb("VmHWM") is not None
        except OSError:
            return False

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _trim_heap()
            self._reset_hwm()

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.baseline
        hwm_kb = _status_kb("VmHWM") if self.resettable else None
        if hwm_kb is None:
            return _max_rss_bytes() - self.baseline
        return hwm_kb * 1024 - self.baseline

    def method(self) -> str:
        if self.device.type == "cuda":
            return CUDA_METHOD
        return CPU_METHOD if self.resettable else CPU_METHOD + " (ru_maxrss: also the model-building transient)"


def _warm_up_libraries(device: torch.device, precision: Precision) -> None:
    """Run a tiny ViT through the same ops once, so lazily loaded code and thread pools are in the baseline."""
    from timm.models.vision_transformer import VisionTransformer

    tiny = VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2, num_classes=10)
    tiny = tiny.to(device)
    images, labels = make_batch(tiny, 2, device)
    infer_step(tiny, images, precision)
    step = TrainStep(tiny, precision)
    step(images, labels)
    del tiny, images, labels, step


def _child(job: MemoryJob) -> dict[str, Any]:
    torch.set_num_threads(int(job["threads"]))
    device = torch.device(job["device"])
    _warm_up_libraries(device, job["precision"])
    meter = _PeakMeter(device)  # baseline: before the model exists
    model = build_model(job["model_name"], job["reduction"], job["model_kwargs"], device)
    if job["compile"]:
        model = torch.compile(model)
    images, labels = make_batch(model, int(job["batch_size"]), device)
    result: dict[str, Any] = {"infer_bytes": None, "train_bytes": None}
    if "infer" in job["modes"]:
        if job["compile"]:
            infer_step(model, images, job["precision"])  # compiles outside the measurement
        meter.reset()
        infer_step(model, images, job["precision"])
        result["infer_bytes"] = meter.peak()
    if "train" in job["modes"]:
        step = TrainStep(model, job["precision"])  # AdamW state allocated here
        if job["compile"]:
            step(images, labels)
        meter.reset()
        step(images, labels)
        result["train_bytes"] = meter.peak()
    result["method"] = meter.method()
    return result


def _main() -> int:
    job = json.loads(sys.stdin.read())
    try:
        result = _child(job)
    except torch.OutOfMemoryError:
        gib = math.floor(10 * torch.cuda.get_device_properties(job["device"]).total_memory / 2**30) / 10
        print(json.dumps({"error": f"batch {job['batch_size']} of {job['model_name']} ({job['reduction']}) does "
                          f"not fit in the GPU's {gib} GiB; use a smaller --batch-size"}))
        return _USER_ERROR_EXIT
    except VitreduceError as err:
        print(json.dumps({"error": str(err)}))
        return _USER_ERROR_EXIT
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
