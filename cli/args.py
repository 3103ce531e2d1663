"""Flags shared by the inference and sampling scripts (sampling, device, labels), their parsing, and clean exits.

Exit status, for every script: 0 done; 2 the command or its inputs need fixing (a bad flag, a missing or unusable
checkpoint, data or output folder; argparse's own errors too); 1 the run failed otherwise (a write error such as a
full disk, the fast path failing to compile). Errors print one line, `error: ...`, without a traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Callable

import torch

from code import FastPathError, SamplingConfig
from utils.checkpoint import CheckpointError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class UsageError(Exception):
    """A problem with the command's inputs, reported as one line without a traceback."""


EXIT_FAILED, EXIT_USAGE = 1, 2


def exit_on_error(main: Callable[[argparse.Namespace], object], args: argparse.Namespace) -> None:
    """Under torchrun every rank meets the same bad input: rank 0 alone prints it; a failed run is printed by each
    rank it happened on (with its rank); every rank exits with the code."""
    rank = os.environ.get("RANK", "0")
    try:
        main(args)
    except (UsageError, CheckpointError, FileNotFoundError, NotADirectoryError) as e:
        if rank == "0":
            print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except (FastPathError, OSError) as e:  # a write that failed (full disk, permissions), a compile that failed
        print(f"error: {'' if rank == '0' else f'rank {rank}: '}{e}", file=sys.stderr)
        sys.exit(EXIT_FAILED)


def setup_logging(is_main: bool = True) -> None:
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, format="%(message)s")


# ---- argument types ---------------------------------------------------------------------------------
def per_scale(kind: type) -> Callable[[str], object]:
    """'600' -> 600; '1.1,1.1,1.0' -> a list; 'v*n' repeats: '1.1*7,1.0*3' is the published temperature list."""
    def parse(text: str):
        values = []
        for part in text.split(","):
            value, _, count = part.partition("*")
            try:
                values += [kind(value)] * (int(count) if count else 1)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__} or a comma list of them "
                                                 "(per scale; 'v*n' repeats v n times)") from None
        return values[0] if len(values) == 1 and "*" not in text and "," not in text else values
    parse.__name__ = f"per-scale {kind.__name__}"
    return parse


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 0")
    return value


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return value


INT_OR_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def int_list(text: str) -> list[int]:
    """'207,360' or '0-9,20' (inclusive ranges) -> a list of integers >= 0."""
    out = []
    for part in text.split(","):
        m = INT_OR_RANGE.fullmatch(part.strip())
        if m is None:
            raise argparse.ArgumentTypeError(f"{part!r} is not a class id (an integer >= 0) or a range such as 0-9")
        start, stop = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if stop < start:
            raise argparse.ArgumentTypeError(f"range {part!r} is empty")
        out += range(start, stop + 1)
    return out


# ---- argument groups --------------------------------------------------------------------------------
def add_sampling_args(parser: argparse.ArgumentParser, *, cfg: float, top_k, top_p, temperature: str,
                      seed: int) -> None:
    g = parser.add_argument_group("sampling (top_k, top_p, temperature: a number, or a comma list with one "
                                  "value per scale)")
    g.add_argument("--cfg", type=float, default=cfg, help=f"classifier-free guidance scale (default {cfg})")
    g.add_argument("--top_k", type=per_scale(int), default=top_k, help=f"0 disables it (default {top_k})")
    g.add_argument("--top_p", type=per_scale(float), default=top_p, help=f"1 keeps every token (default {top_p})")
    g.add_argument("--temperature", type=per_scale(float), default=None,
                   help=f"applied after the top-k / top-p filter (default {temperature})")
    g.add_argument("--seed", type=non_negative_int, default=seed, help=f"random seed (default {seed})")


def add_device_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("device")
    g.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    g.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="compute precision: generation under torch.autocast with this dtype, as published (default "
                        "fp16 on CUDA, as the published scripts; fp32 on CPU, which turns autocast off). The eager "
                        "path keeps fp32 weights; the fast path loads the linear weights in this dtype")
    g.add_argument("--no_tf32", dest="tf32", action="store_false",
                   help="keep CUDA's float32 matmuls and convolutions in full float32 (default: TF32, as the "
                        "published scripts set it; it affects what runs in float32, e.g. the VQVAE outside autocast)")


def published_numerics(device: torch.device, tf32: bool) -> bool:
    """TF32 for CUDA's float32 matmuls and convolutions, as the published scripts set it; whether it is on. A
    process-wide setting: scripts call it once, before anything runs."""
    if device.type != "cuda":
        return False
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    return tf32


def code_temperature(num_scales: int) -> list[float]:
    """The published CoDe schedule: 1.1 on all scales but the last three, 1.0 on those ([1.1]*7 + [1.0]*3)."""
    fine = min(3, num_scales)
    return [1.1] * (num_scales - fine) + [1.0] * fine


def sampling_config(args: argparse.Namespace, num_scales: int, default_temperature) -> SamplingConfig:
    temperature = args.temperature if args.temperature is not None else default_temperature
    sampling = SamplingConfig(cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, temperature=temperature)
    try:
        sampling.validate(num_scales)
    except ValueError as e:
        raise UsageError(f"--{e}") from None  # the messages start with the field's name
    return sampling


def resolve_device(text: str | None) -> torch.device:
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UsageError(f"--device {text!r} is not a device (cuda, cuda:N or cpu)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {text}: CUDA is not available here; use --device cpu")
    return device


def resolve_dtype(text: str | None, device: torch.device) -> torch.dtype:
    return DTYPES[text] if text is not None else (torch.float16 if device.type == "cuda" else torch.float32)


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def check_labels(labels: list[int], num_classes: int, flag: str) -> None:
    bad = [c for c in labels if not 0 <= c < num_classes]
    if bad:
        raise UsageError(f"{flag}: class {bad[0]} is not in 0..{num_classes - 1} (the model has {num_classes} classes)")


def writable_dir(path: str | Path) -> Path:
    """Check, before any model is loaded, that `path` can be created (or is) a folder we can write in; creates
    nothing, so that an error found later leaves no empty folder behind."""
    path = Path(path).resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file")
        if existing == path:
            with tempfile.TemporaryFile(dir=path):
                pass
        elif not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(f"{existing} is not writable")
    except OSError as e:
        raise UsageError(f"cannot write to the output folder {path}: {e.strerror or e}") from None
    return path
