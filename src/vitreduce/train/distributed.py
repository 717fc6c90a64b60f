"""Process-group set-up for torchrun (single or multi-node) and the one helper for rank-0-only work.

``torchrun --nproc_per_node N -m vitreduce train ...`` sets RANK, LOCAL_RANK and WORLD_SIZE (and the
rendezvous address); without them the run is a single process. A process torchrun started joins the
process group and trains under DDP even alone (``--nproc_per_node 1``), so the launcher path is the same
at every size. gloo on CPU, nccl on CUDA.
Only global rank 0 writes files and prints: everything that does goes through ``DistInfo.on_main``.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from vitreduce.device import resolve_device
from vitreduce.errors import VitreduceError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: its global rank, the number of processes, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # this process group was created by ``init`` (``shutdown`` destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Several processes, or one that torchrun started (its DDP and nccl/gloo paths run at world size 1 too)."""
        return self.world_size > 1 or self.owns_group

    def on_main(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Call ``fn`` on global rank 0 only (the one process that writes logs and files)."""
        return fn(*args, **kwargs) if self.is_main else None

    def agree(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 and hand its result, or its error, to every rank.

        For checks that touch the run directory: every rank then fails with rank 0's message instead
        of waiting forever for a rank that already stopped.
        """
        if not self.distributed:
            return fn()
        payload: list[Any] = [None]
        error: BaseException | None = None
        if self.is_main:
            try:
                payload[0] = ("ok", fn())
            except BaseException as err:  # noqa: BLE001 (re-raised below, after the other ranks are told)
                error = err
                payload[0] = ("error", str(err))
        dist.broadcast_object_list(payload, src=0)
        if error is not None:
            raise error
        status, value = payload[0]
        if status == "error":
            raise VitreduceError(f"rank 0 stopped: {value}")
        return value

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def init(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if there is one; otherwise describe a single process.

    Args:
        device: the config's device preference ('auto', 'cpu', 'cuda').
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    target = resolve_device(device, "device:")
    if world_size == 1 and "TORCHELASTIC_RUN_ID" not in os.environ:  # torchrun sets it, even for one process
        return DistInfo(device=target)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if target.type == "cuda":
        # A cluster may show each task only its own GPU (SLURM --gpus-per-task, cgroups): then it is cuda:0.
        target = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(target)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=target, owns_group=owns)


def shutdown(info: DistInfo) -> None:
    """Leave the process group if ``init`` created it (a caller's own group is left alone)."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (no-op for a single process); returns it."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks in place (no-op for a single process); returns it."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def gather_objects(obj: Any, info: DistInfo) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0, in rank order (None on the other ranks); ``[obj]`` for one process."""
    if not info.distributed:
        return [obj]
    gathered: list[Any] | None = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered
