"""torch.distributed set-up shared by sampling and training: torchrun when present, one process otherwise."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the torchrun process group (NCCL on CUDA, gloo on CPU); a single process otherwise.

    `device`: 'cuda', 'cuda:N', 'cpu' or None (CUDA when available). Under torchrun each rank gets cuda:LOCAL_RANK;
    a single process takes cuda:N as given.
    """
    dev = local_device(device)
    use_cuda = dev.type == "cuda"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local, dev)


def local_device(device: str | None = None) -> torch.device:
    """This process's device: cuda:LOCAL_RANK under torchrun, `device` as given otherwise (None: CUDA when
    available)."""
    dev = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and ("LOCAL_RANK" in os.environ or dev.index is None):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def is_rank_zero() -> bool:
    """True outside torchrun and on its rank 0."""
    return os.environ.get("RANK", "0") == "0"


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
