"""Safe checkpoint I/O: plain tensors only, clear errors naming the file, atomic writes.

Two formats are read, told apart by their first bytes, not their names: PyTorch's (`torch.load` with
weights_only=True, memory-mapped) and safetensors (no pickle at all; the header's metadata, JSON-encoded by
`save_safetensors`, comes back as the file's other entries).
"""
from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import UsageError
from .files import atomic_write, atomic_write_path

SAFETENSORS_MAX_HEADER = 100_000_000  # the format's own limit on the JSON header


class CheckpointError(UsageError, ValueError):
    """A checkpoint file that cannot be used, with the file and the reason in the message."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict with weights_only=True. Accepts a plain dict of tensors or {'model': ..., ...}."""
    return read_checkpoint(path)[0]


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, the file's other entries): a plain dict of tensors, or {'model': state dict, 'config': ...}."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(folder_message(path))
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if is_safetensors(path):
        obj, extras = read_safetensors(path)
        check_finite(obj, path)
        return obj, extras
    obj, extras = load_weights_only(path), {}
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj, extras = obj["model"], {k: v for k, v in obj.items() if k != "model"}
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path} is not a plain state dict: entries {bad[:5]} are not tensors")
    check_finite(obj, path)
    return obj, extras


def is_safetensors(path: str | os.PathLike) -> bool:
    """A safetensors file starts with its header's length (8 bytes, little-endian) and the header's '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    size = int.from_bytes(head[:8], "little")
    return len(head) == 9 and head[8:9] == b"{" and size <= SAFETENSORS_MAX_HEADER


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata): values written by save_safetensors are JSON, others (e.g. {'format': 'pt'}) kept as text."""
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            sd, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not sd:
        raise CheckpointError(f"{path} holds no tensors")
    return sd, {k: decode_metadata(v) for k, v in metadata.items()}


def decode_metadata(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def save_safetensors(state_dict: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None
                     ) -> Path:
    """Tensors as safetensors, written atomically without a copy of the weights in memory (a tensor sharing memory
    with another, which the format cannot hold, is copied). `metadata`: JSON-able values (e.g. {'config': ...}),
    stored JSON-encoded in the header."""
    tensors, seen = {}, set()
    for k, v in state_dict.items():
        v = v.detach().to("cpu").contiguous()
        ptr = v.untyped_storage().data_ptr()
        tensors[k] = v.clone() if ptr in seen and v.numel() else v
        seen.add(ptr)
    text = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    return atomic_write_path(path, lambda tmp: save_file(tensors, tmp, metadata=text))


def check_finite(state: dict[str, torch.Tensor], path) -> None:
    """A NaN weight only ever generates garbage (or fails deep in sampling): refuse it here. (Infinities can be
    legitimate: VAR's attention mask buffer holds -inf.)"""
    bad = [k for k, v in state.items() if v.is_floating_point() and bool(torch.isnan(v).any())]
    if bad:
        raise CheckpointError(f"{path} holds NaN weights in {len(bad)} tensors ({', '.join(bad[:3])}"
                              f"{' ...' if len(bad) > 3 else ''}): the file is damaged or its training diverged; "
                              "use another checkpoint")


def folder_message(path: Path) -> str:
    return f"checkpoint {path} is a folder, not a file: give the file in it, or the folder as ckpt_dir / --ckpt_dir"


def load_weights_only(path: Path):
    """torch.load(weights_only=True): memory-mapped for the zip format torch.save writes, plainly for the legacy one.
    Its unpickler refuses anything but tensors and plain containers; a damaged file fails in the zip reader or on
    the legacy format's magic number."""
    zipped = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError:
        if zipped:
            raise CheckpointError(f"{path} contains Python objects other than tensors and plain containers; "
                                  "refusing to unpickle it (weights_only=True). Re-save it as a plain state dict."
                                  ) from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?)") from None
    except Exception as e:  # zip reader errors, EOF, garbage bytes: all mean the file is not a checkpoint
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def check_state_dict(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], path, what: str,
                     optional: set[str] = frozenset()) -> None:
    """Strict comparison of keys and shapes, reporting everything that differs in one error."""
    missing = sorted(set(expected) - set(found) - optional)
    unexpected = sorted(set(found) - set(expected))
    shapes = [f"{k}: file {tuple(found[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in found and tuple(found[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        lines = [f"{path} does not match {what}:"]
        for name, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                lines.append(f"  {name} ({len(items)}): {', '.join(items[:6])}{' ...' if len(items) > 6 else ''}")
        raise CheckpointError("\n".join(lines))


def atomic_save(obj, path: str | os.PathLike) -> None:
    """torch.save, written atomically (see utils.files.atomic_write)."""
    atomic_write(path, lambda f: torch.save(obj, f))
