"""Safe checkpoint I/O: plain tensors only, clear errors naming the file, atomic writes."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from .files import atomic_write


class CheckpointError(ValueError):
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
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap can only be used" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # not a zip file: try the legacy format
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e) and "Unsupported operand" not in str(e):
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
