"""Sharded checkpoints: folders written by torch.distributed.checkpoint (each rank its shards, in parallel),
resumable with any world size (DCP reshards on load).

Only tensors go through DCP: the optimizer's param groups and the run's metadata are in META_NAME
(torch.load weights_only=True), DCP's own index is read by an allow-list unpickler, and a checkpoint holding pickled
objects is refused.
"""
from __future__ import annotations

import io
import os
import pickle
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import filesystem as dcp_fs
from torch.distributed.checkpoint import metadata as dcp_md
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from utils.checkpoint import CheckpointError, atomic_save, load_weights_only
from utils.dist import barrier

from .state import rng_state

SHARDED_NAME = "ckpt_last.dcp"  # a folder
META_NAME = "meta.pth"  # in the folder: step, data position, config, recipe, the optimizer's param groups
META_KEYS = ("step", "config", "recipe", "data", "rng", "param_groups", "world_size")


def save_sharded(path: str | os.PathLike, *, model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
                 data: dict, recipe: dict, config: dict) -> Path:
    """Every rank writes its shards into PATH.tmp, then rank 0 adds META_NAME and renames it to PATH (the previous
    checkpoint is kept as PATH.old until then). Collective: call on every rank."""
    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    main = dist.get_rank() == 0
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd["state"]}, checkpoint_id=tmp)
    if main:
        atomic_save({"step": step, "epoch": data["epoch"], "data": data, "rng": rng_state(), "config": config,
                     "recipe": recipe, "param_groups": optim_sd["param_groups"],
                     "world_size": dist.get_world_size()}, tmp / META_NAME)
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    barrier()
    return path


def sharded_checkpoint(path: str | os.PathLike) -> Path | None:
    """PATH if it holds a finished checkpoint, else PATH.old (a save killed between its two renames), else None."""
    path = Path(path)
    for candidate in (path, path.with_name(path.name + ".old")):
        if (candidate / META_NAME).is_file():
            return candidate
    return None


def read_meta(path: str | os.PathLike) -> dict:
    """The run's metadata in a sharded checkpoint folder (no tensors of the model: those stay on disk)."""
    path = Path(path)
    if not (path / META_NAME).is_file():
        raise CheckpointError(f"{path} is not a sharded training checkpoint (no {META_NAME} in it); sharded "
                              f"checkpoints are the {SHARDED_NAME} folders that --shard fsdp writes")
    meta = load_weights_only(path / META_NAME)
    missing = [k for k in META_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise CheckpointError(f"{path / META_NAME} lacks {', '.join(missing)}: not written by --shard fsdp")
    return meta


def load_sharded(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Load weights and AdamW state from a sharded checkpoint written with any world size; returns its metadata.
    Collective: call on every rank, after wrap_fsdp (and to_empty, for a model built on the meta device)."""
    path = Path(path)
    meta = read_meta(path)
    model_sd, optim_sd = get_state_dict(model, optimizer)  # initialises AdamW's state, to be overwritten
    state = {"model": model_sd, "optimizer": optim_sd["state"]}
    try:
        dcp.load(state, storage_reader=SafeReader(path), planner=TensorsOnlyPlanner())
    except CheckpointException as e:
        raise CheckpointError(f"{path} does not fit this model and optimizer: {first_failure(e)}") from None
    except CheckpointError as e:  # raised by SafeReader or TensorsOnlyPlanner outside DCP's wrapping
        raise CheckpointError(f"{path}: {e}") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict={"state": state["optimizer"], "param_groups": meta["param_groups"]})
    return meta


def first_failure(e: CheckpointException) -> str:
    """The first rank's error (DCP wraps each as (exception, traceback)), in one line."""
    failures = [f[0] if isinstance(f, tuple) else f for f in getattr(e, "failures", {}).values()]
    text = str(failures[0] if failures else e).strip()
    return text.splitlines()[-1] if text else type(e).__name__


class TensorsOnlyPlanner(DefaultLoadPlanner):
    """DCP unpickles non-tensor entries with weights_only=False: a checkpoint with such entries is refused."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        raise CheckpointError(f"entry {read_item.dest_index.fqn} is a pickled object, not a tensor; refusing to "
                              "unpickle it")


METADATA_CLASSES = {(c.__module__, c.__qualname__) for c in (
    dcp_md.Metadata, dcp_md.TensorStorageMetadata, dcp_md.BytesStorageMetadata, dcp_md.ChunkStorageMetadata,
    dcp_md.TensorProperties, dcp_md.MetadataIndex, dcp_md.StorageMeta, dcp_md._MEM_FORMAT_ENCODING,
    dcp_fs._StorageInfo, dcp_fs._StoragePrefix)}
METADATA_CALLABLES = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
                      ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath")}


class MetadataUnpickler(pickle.Unpickler):
    """Only what DCP's index is made of: its metadata classes, torch.Size, dtypes, layouts and paths."""

    def find_class(self, module: str, name: str):
        if (module, name) in METADATA_CLASSES | METADATA_CALLABLES or (
                module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.memory_format))):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint index")


class SafeReader(FileSystemReader):
    """DCP's index (.metadata) read by MetadataUnpickler instead of an unrestricted pickle.load."""

    def read_metadata(self, *args, **kwargs) -> dcp_md.Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        try:
            with self.fs.create_stream(path, "rb") as f:
                metadata = MetadataUnpickler(f).load()
        except FileNotFoundError:
            raise CheckpointError(f"{Path(self.path)} has no {Path(path).name}: the save that wrote it did not "
                                  "finish") from None
        except Exception as e:
            raise CheckpointError(f"{path} is not a readable checkpoint index: {str(e).splitlines()[0]}") from None
        if not isinstance(metadata, dcp_md.Metadata):
            raise CheckpointError(f"{path} is not a checkpoint index (it holds a {type(metadata).__name__})")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = dcp_md.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata
