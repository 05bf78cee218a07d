"""torchrun / DDP plumbing: gloo on CPU, NCCL on GPUs; a no-op for a single process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed() -> Dist:
    """Reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK; starts the process group when world > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device="cuda" if torch.cuda.is_available() else "cpu")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        backend, device = "nccl", f"cuda:{local}"
    else:
        backend, device = "gloo", "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Dist(rank, world, local, device)


def all_mean(x: torch.Tensor, d: Dist) -> torch.Tensor:
    if not d.enabled:
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / d.world


def mean_of_sums(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """(sum over ranks of x) / world: a rank's share of a global normaliser."""
    return all_mean(x, d)


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
