"""Data-parallel setup under ``torchrun`` and the few collectives the recipe needs.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is initialised from the
``env://`` variables torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR, ...; read by
torch.distributed, not by the job's settings), NCCL on CUDA and gloo on CPU. Every rank
sees the same block order and takes its own slice of each micro-batch; only rank 0
writes checkpoints and artifacts.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Dist",
    "all_reduce_sum",
    "barrier",
    "init_distributed",
    "is_main_process",
    "stop_requested",
]


@dataclass(frozen=True)
class Dist:
    """This process's place in the group (a single process is rank 0 of 1)."""

    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes files and logs progress."""
        return self.rank == 0


def init_distributed(want_cuda: bool) -> Dist:
    """Join the torchrun group when ``WORLD_SIZE`` > 1 (once per process)."""
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    # torchrun's contract: these variables describe the process group (env:// init).
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(0, 1, 0)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if want_cuda else "gloo", init_method="env://")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank)


def is_main_process() -> bool:
    """True on rank 0 of a torchrun group, and in a plain single process."""
    if "torch.distributed" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return bool(dist.get_rank() == 0)
    return int(os.environ.get("RANK", "0")) == 0


def barrier(ctx: Dist) -> None:
    """Wait for every rank (no-op in a single process)."""
    if ctx.world > 1:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(tensor: Any, ctx: Dist) -> None:
    """Sum ``tensor`` over ranks in place (no-op in a single process)."""
    if ctx.world > 1:
        import torch.distributed as dist

        dist.all_reduce(tensor)


def stop_requested(wanted_here: bool, ctx: Dist) -> bool:
    """Whether any rank wants to stop; under DDP all ranks must agree (one all-reduce)."""
    if ctx.world == 1:
        return wanted_here
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", ctx.local_rank) if dist.get_backend() == "nccl" else None
    wanted = torch.tensor([1.0 if wanted_here else 0.0], device=device)
    dist.all_reduce(wanted, op=dist.ReduceOp.MAX)
    return bool(wanted.item() > 0)
