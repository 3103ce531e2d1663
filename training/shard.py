"""Sharded training with FSDP2: every VAR block and then the model are `fully_shard`-ed over the ranks, so each
GPU keeps 1/world of the weights, gradients and AdamW state.

The script's model stays a plain one: training runs on a sharded twin built on the meta device and filled from it
(or from a sharded checkpoint, training.shard_ckpt), and at the end the twin's weights are gathered back into it on
rank 0, for the script's export.
"""
from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from models import VAR
from models.meta import on_meta
from utils.dist import DistInfo

from .config import SHARD_CHOICES, ConfigError


def check_shard(shard: str, model: nn.Module, dtype: torch.dtype | None, role: str) -> None:
    """The combinations sharded training cannot run, as one clear error each."""
    if shard not in SHARD_CHOICES:
        raise ConfigError(f"--shard must be one of {', '.join(SHARD_CHOICES)}, got {shard!r}")
    if shard == "fsdp" and not isinstance(model, VAR):
        raise ConfigError(f"--shard fsdp shards VAR models (each block, then the rest); train the {role} without it")
    if shard == "fsdp" and dtype == torch.float16:
        raise ConfigError("--shard fsdp trains in bf16 or fp32: fp16 needs a gradient scaler that agrees across "
                          "shards, which these scripts do not have; pass --dtype bf16 (or fp32)")


def ensure_process_group(info: DistInfo) -> None:
    """fully_shard needs a process group: a single process (no torchrun) gets a world of one."""
    if not dist.is_initialized():
        backend = "nccl" if info.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def mp_policy() -> MixedPrecisionPolicy:
    """Mixed precision as the unsharded run has it: weights gathered in fp32 and cast by autocast inside the matmuls,
    gradients reduced in fp32, block inputs left as they are (the residual stream stays fp32). Gathering in bf16
    would halve the traffic but also round what autocast keeps in fp32 (the attention's temperature, the embeddings);
    see docs/sharded-training.md for what that changed."""
    return MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32, cast_forward_inputs=False)


def wrap_fsdp(model: VAR, device: torch.device) -> VAR:
    """Shard each block, then the rest (embeddings, position tables, head) as the root; returns the same module,
    now an FSDPModule. The model may be on the meta device (then `to_empty` it and load weights)."""
    mesh, policy = init_device_mesh(device.type, (dist.get_world_size(),)), mp_policy()
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def sharded_twin(model: VAR, device: torch.device, fill: bool) -> VAR:
    """A sharded copy of `model` (same config, drop path included) on `device`: each rank allocates only its
    shards, filled from `model`'s weights when `fill` (else left for a checkpoint to load)."""
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")  # never modified
    with on_meta():
        twin = VAR(model.config)
    twin = wrap_fsdp(twin, device).to_empty(device=device)
    if fill:
        set_model_state_dict(twin, model.state_dict(), options=StateDictOptions(full_state_dict=True))
    return twin.train()


def gather_into(twin: nn.Module, model: nn.Module) -> None:
    """The sharded twin's weights, gathered, into the plain `model` on rank 0. Collective: call on every rank."""
    full = get_model_state_dict(twin, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() == 0:
        model.load_state_dict(full, strict=True)


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def missing_passes(model: nn.Module, passes: int, device: torch.device) -> int:
    """A sharded model's forward pass gathers weights from every rank, so all ranks must run as many: how many
    more this rank needs to match the rank with the most validation batches (0 for an unsharded model). Collective
    for a sharded model."""
    if not is_sharded(model):
        return 0
    most = torch.tensor(passes, device=device)
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    return int(most) - passes
