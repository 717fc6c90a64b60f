"""The correctness sections of benchmarks/gpu_check.py: training steps per precision, kill and resume,
torch.compile with shared weights, DDP through torchrun, Hessian products on the device against the CPU.

Each section takes a ``Check`` and returns {"checks": {name: {"passed", "detail"}}, ...}; it raises
``Skipped`` when its work cannot run on this device.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

import vitreduce
from vitreduce.data.synth import write_synth_dataset
from vitreduce.reduction.params import unique_parameters
from vitreduce.sharpness.hessian import hessian_vector_product, top_eigenvalues
from vitreduce.sharpness.measures import analysis_mode, batch_losses
from vitreduce.train.ema import Ema
from vitreduce.train.step import StepContext, train_step

REDUCTIONS = ("none", "grouped", "shallow")
TINY = dict(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2, num_classes=5)  # dry run
SMALL = dict(img_size=32, patch_size=4, embed_dim=96, depth=4, num_heads=3, num_classes=10)  # on a GPU
EMA_DECAY = 0.9  # far from 1, so one update and two (timm's shared-weight bug) differ clearly


class Skipped(Exception):
    """A section (or part) that cannot run here; its message is the reason."""


@dataclass
class Check:
    device: torch.device
    dry: bool
    out: Path  # this section's scratch folder
    budget: float  # seconds

    def __post_init__(self):
        self.deadline = time.perf_counter() + self.budget
        self.out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def verdict(passed, detail) -> dict:
    return {"passed": bool(passed), "detail": detail}


def small_model(check: Check, reduction: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    kwargs = TINY if check.dry else SMALL
    return vitreduce.create_model("vit_tiny_patch16_224", reduction=reduction, **kwargs).to(check.device)


def fixed_batches(check: Check, count: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` random batches cycled through the steps: a memorisation task whose loss must fall."""
    kwargs, batch = (TINY, 8) if check.dry else (SMALL, 64)
    generator = torch.Generator().manual_seed(1)
    size = kwargs["img_size"]
    return [(torch.randn(batch, 3, size, size, generator=generator).to(check.device),  # (B, C, H, W)
             torch.randint(0, kwargs["num_classes"], (batch,), generator=generator).to(check.device))
            for _ in range(count)]


def sharing(model: torch.nn.Module) -> list[tuple[str, ...]]:
    """Names that share one storage (data_ptr), each group sorted: what must not change during training."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(param.data_ptr(), []).append(name)
    return sorted(tuple(sorted(names)) for names in groups.values())


def context(model, module, check: Check, precision: str, ema: Ema | None) -> StepContext:
    params = list(unique_parameters(module, trainable_only=True))
    return StepContext.build(model, module, loss_fn=torch.nn.CrossEntropyLoss(),
                             optimizer=torch.optim.AdamW(params, lr=1e-3),
                             scaler=torch.amp.GradScaler(check.device.type, enabled=precision == "fp16"),
                             ema=ema, precision=precision, device=check.device, nonfinite="skip")


# ---- training steps -----------------------------------------------------------------------------------


def _ema_once(module, ema: Ema, ctx: StepContext, batch) -> dict:
    """One more step, then the average of a shared tensor (or the first one) against one blend and two."""
    shared = [names for names in sharing(module) if len(names) > 1]
    name = shared[0][0] if shared else next(iter(ema.tensors()))
    key = next(n for n in ema.tensors() if n in (shared[0] if shared else (name,)))
    before = ema.tensors()[key].detach().clone()
    result = train_step(ctx, [batch])
    weight = dict(module.named_parameters(remove_duplicate=False))[name].detach()
    once = before + (1 - EMA_DECAY) * (weight - before)
    twice = once + (1 - EMA_DECAY) * (weight - once)
    got = ema.tensors()[key]
    err_once, err_twice = (got - once).abs().max().item(), (got - twice).abs().max().item()
    return {"tensor": key, "shared_by": len(shared[0]) if shared else 1, "skipped_step": result.skipped,
            "max_err_one_update": err_once, "max_err_two_updates": err_twice,
            "passed": result.skipped or (err_once <= 1e-6 and (not shared or err_twice > 10 * err_once))}


def _train_variant(check: Check, reduction: str, precision: str, steps: int) -> dict:
    module = small_model(check, reduction)
    layout = sharing(module)
    ema = Ema(module, EMA_DECAY)
    ctx = context(module, module, check, precision, ema)
    batches = fixed_batches(check)
    losses, skipped = [], 0
    for i in range(steps):
        result = train_step(ctx, [batches[i % len(batches)]])
        skipped += result.skipped
        if not result.skipped:
            losses.append(result.loss)
        if check.left() < 0:
            break
    ema_check = _ema_once(module, ema, ctx, batches[0])
    k = max(1, len(losses) // 10)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    finite = all(torch.isfinite(torch.tensor(losses)).tolist()) and bool(losses)
    return {"reduction": reduction, "precision": precision, "steps": i + 1, "skipped_steps": skipped,
            "first_loss": first, "last_loss": last, "finite": finite, "decreasing": last < first,
            "sharing_kept": sharing(module) == layout, "shared_groups": sum(len(g) > 1 for g in layout),
            "ema_once": ema_check["passed"], "ema_detail": ema_check,
            "scale": ctx.scaler.get_scale() if ctx.scaler.is_enabled() else None}


def train_steps(check: Check) -> dict:
    """A few hundred steps per reduction and precision through vitreduce's train_step, with its EMA."""
    steps = 30 if check.dry else 300
    rows, checks, notes = [], {}, []
    for precision in ("fp32", "bf16", "fp16"):
        if precision == "fp16" and not check.cuda:
            notes.append("fp16 skipped: vitreduce's fp16 (GradScaler) needs CUDA")
            continue
        for reduction in REDUCTIONS:
            row = _train_variant(check, reduction, precision, steps)
            rows.append({k: v for k, v in row.items() if k != "ema_detail"})
            fine = row["finite"] and row["decreasing"] and row["sharing_kept"] and row["ema_once"]
            fine = fine and row["skipped_steps"] <= max(2, row["steps"] // 20)  # fp16: a few overflow skips
            checks[f"{reduction}/{precision}"] = verdict(fine, row["ema_detail"] | {
                k: row[k] for k in ("first_loss", "last_loss", "skipped_steps", "sharing_kept")})
    return {"checks": checks, "rows": rows, "notes": notes}


# ---- resume -------------------------------------------------------------------------------------------

# A run of vitreduce's real train path, SIGKILLed at its n-th optimizer step when n > 0 (as tests/killer.py).
CHILD = """
import os, signal, sys, torch
from vitreduce.train.config import load_config
from vitreduce.train.loop import train
config, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
if os.environ.get("CUBLAS_WORKSPACE_CONFIG"):
    torch.use_deterministic_algorithms(True, warn_only=True)
seen = [0]
def on_event(event):
    if event == "step":
        seen[0] += 1
        if seen[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
train(load_config(config), out, on_event=on_event)
"""


def run_config(check: Check, precision: str, **overrides) -> dict:
    data = check.out / "synth"
    if not data.exists():
        write_synth_dataset(data, classes=4, train_per_class=8, val_per_class=4, size=16)
    tree = {"seed": 3, "epochs": 2, "device": check.device.type, "precision": precision,
            "model": {"name": "vit_tiny_patch16_224", "reduction": "grouped", "num_classes": 4, "img_size": 16,
                      "patch_size": 4, "embed_dim": 16, "depth": 2, "num_heads": 2},
            "data": {"root": str(data), "batch_size": 8, "workers": 0},
            "augment": {"repeated_aug": 1}, "ema": {"decay": EMA_DECAY},
            "checkpoint": {"recovery_every_steps": 2}, "logging": {"progress": "none"}}
    for key, value in overrides.items():
        tree[key] = {**tree[key], **value} if isinstance(value, dict) else value
    return tree


def _child_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "PYTHONUNBUFFERED": "1"}


def _python(check: Check, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], env=env or _child_env(), capture_output=True, text=True,
                          timeout=max(5.0, check.left()))


def max_diff(a: Path, b: Path) -> float:
    diff = 0.0
    for name in ("model.safetensors", "model_ema.safetensors"):
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        if ta.keys() != tb.keys():
            return float("inf")
        diff = max([diff] + [(ta[k].double() - tb[k].double()).abs().max().item() for k in ta])
    return diff


def resume(check: Check) -> dict:
    """Uninterrupted run vs the same run SIGKILLed at step 5 and rerun, both on the device."""
    precision = "fp16" if check.cuda else "fp32"  # fp16 on a GPU: the GradScaler's state resumes too
    config = check.out / "config.yaml"
    config.write_text(yaml.safe_dump(run_config(check, precision)))
    whole, killed = check.out / "whole", check.out / "killed"
    done = _python(check, "-c", CHILD, config, whole, 0)
    if done.returncode:
        raise RuntimeError(f"uninterrupted run failed: {done.stderr[-1500:]}")
    first = _python(check, "-c", CHILD, config, killed, 5)
    again = _python(check, "-c", CHILD, config, killed, 0)
    if again.returncode:
        raise RuntimeError(f"rerun after the kill failed: {again.stderr[-1500:]}")
    diff = max_diff(whole, killed)
    tolerance = 0.0 if not check.cuda else 1e-5
    mode = "bitwise (deterministic algorithms on, CUBLAS_WORKSPACE_CONFIG=:4096:8)" if diff == 0 else \
        f"max abs diff {diff:.3g} against tolerance {tolerance:g} (deterministic algorithms on, warn_only)"
    return {"checks": {
        "killed": verdict(first.returncode == -9, f"exit {first.returncode} (SIGKILL at step 5 expected)"),
        "resumed_equal": verdict(diff <= tolerance, mode)}, "precision": precision, "max_abs_diff": diff,
        "comparison": "bitwise" if diff == 0 else "tolerance", "headlines": [f"resume: {mode}"]}


# ---- DDP ----------------------------------------------------------------------------------------------


def ddp(check: Check) -> dict:
    """``torchrun --nproc_per_node 1 -m vitreduce train`` (nccl on CUDA, gloo on CPU) against a plain run."""
    backend = "nccl" if check.cuda else "gloo"
    config = check.out / "config.yaml"
    config.write_text(yaml.safe_dump(run_config(check, "fp32", epochs=1)))
    # DDP's logger prints its set-up (backend_name: nccl / gloo) at these levels: proof the DDP path ran.
    env = {**_child_env(), "TORCH_DISTRIBUTED_DEBUG": "INFO", "TORCH_CPP_LOG_LEVEL": "INFO"}
    launched = _python(check, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                       "-m", "vitreduce", "train", config, "--out", check.out / "ddp", env=env)
    if launched.returncode:
        raise RuntimeError(f"torchrun run failed (exit {launched.returncode}): {launched.stderr[-2000:]}")
    plain = _python(check, "-c", CHILD, config, check.out / "plain", 0)
    if plain.returncode:
        raise RuntimeError(f"single-process run failed: {plain.stderr[-1500:]}")
    diff = max_diff(check.out / "plain", check.out / "ddp")
    text = launched.stdout + launched.stderr
    ran = "DDP Initialized" in text and f"backend_name: {backend}" in text
    return {"checks": {
        "same_weights": verdict(diff <= 1e-5, f"max abs diff {diff:.3g} against a single process (tolerance 1e-5)"),
        "ddp_backend": verdict(ran, f"DDP initialised with backend {backend}" if ran else
                               f"no 'DDP Initialized ... backend_name: {backend}' in torchrun's log")},
        "backend": backend, "max_abs_diff": diff}


# ---- torch.compile ------------------------------------------------------------------------------------


def _losses(check: Check, model, module, steps: int, after_warmup=None) -> list[float]:
    """fp32 losses of ``steps`` steps of ``model`` (training ``module``); ``after_warmup()`` after step 3."""
    ctx = context(model, module, check, "fp32", Ema(module, EMA_DECAY))
    batches = fixed_batches(check)
    losses = []
    for i in range(steps):
        losses.append(train_step(ctx, [batches[i % len(batches)]]).loss)
        if i == 2 and after_warmup:
            after_warmup()
    return losses


def compile_check(check: Check) -> dict:
    """Grouped model: eager and compiled from the same weights on the same batches; sharing, graph counts."""
    from torch._dynamo.utils import counters

    backend = "aot_eager" if check.dry else "inductor"
    steps = 8 if check.dry else 40
    eager = small_model(check, "grouped")
    layout = sharing(eager)
    eager_losses = _losses(check, eager, eager, steps)
    module = small_model(check, "grouped")
    torch._dynamo.reset()
    counters.clear()
    warm: list[int] = []
    losses = _losses(check, torch.compile(module, backend=backend), module, steps,
                     lambda: warm.append(counters["stats"]["unique_graphs"]))
    graphs_warm = warm[0]
    graphs = counters["stats"]["unique_graphs"]
    breaks = sum(counters["graph_break"].values())
    diff = max(abs(a - b) / max(abs(a), 1e-8) for a, b in zip(eager_losses, losses, strict=True))
    tolerance = 1e-2
    return {"checks": {
        "losses_match": verdict(diff <= tolerance, f"max relative loss difference {diff:.3g} over {steps} "
                                                   f"steps (tolerance {tolerance:g}, fp32, backend {backend})"),
        "sharing_kept": verdict(sharing(module) == layout, f"{sum(len(g) > 1 for g in layout)} shared groups"),
        "no_recompile_storm": verdict(graphs == graphs_warm, f"{graphs_warm} graphs after 3 steps, {graphs} "
                                                             f"after {steps}; {breaks} graph breaks")},
        "backend": backend, "graphs": graphs, "graph_breaks": breaks, "max_rel_loss_diff": diff}


# ---- Hessian ------------------------------------------------------------------------------------------


def _spectrum(model, batch, device: torch.device) -> tuple[torch.Tensor, float]:
    model = model.to(device)
    params = list(unique_parameters(model, trainable_only=True))
    batch = tuple(t.to(device) for t in batch)
    generator = torch.Generator().manual_seed(2)
    vector = [torch.randn(p.shape, generator=generator).to(device) for p in params]
    with analysis_mode(model):
        losses = batch_losses(model, [batch])
        hvp = torch.cat([h.flatten() for h in hessian_vector_product(losses, params, vector)]).cpu().double()
        top = top_eigenvalues(losses, params, k=1, max_iters=100, tol=1e-4, seed=0).values[0]
    return hvp, top


def hessian(check: Check) -> dict:
    """One HVP and the top eigenvalue of a grouped model on the device against the CPU, on one batch."""
    cpu = Check(torch.device("cpu"), check.dry, check.out, check.left())
    batch = tuple(t.cpu() for t in fixed_batches(cpu, 1)[0])
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # full fp32 for the match
    try:
        hvp_cpu, top_cpu = _spectrum(small_model(cpu, "grouped"), batch, torch.device("cpu"))
        hvp_dev, top_dev = _spectrum(small_model(cpu, "grouped"), batch, check.device)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    rel = ((hvp_dev - hvp_cpu).norm() / hvp_cpu.norm()).item()
    top_rel = abs(top_dev - top_cpu) / abs(top_cpu)
    note = "" if check.cuda else " (dry run: the CPU against itself)"
    return {"checks": {
        "hvp": verdict(rel <= 1e-4, f"relative L2 difference {rel:.3g} (tolerance 1e-4){note}"),
        "top_eigenvalue": verdict(top_rel <= 1e-2, f"{top_dev:.6g} on {check.device} vs {top_cpu:.6g} on cpu, "
                                                   f"relative {top_rel:.3g} (tolerance 1e-2)")},
        "top_eigenvalue": {"device": top_dev, "cpu": top_cpu}}
