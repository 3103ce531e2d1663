"""What every script shares: flag types, the sampling and device flags, logging, and clean exits.

Exit status, for every script: 0 done; 2 the command or its inputs need fixing (a bad flag, a missing or unusable
checkpoint, image, data or output folder, a folder another run holds; argparse's own errors too); 1 the run failed
otherwise (a write error such as a full disk, out of memory, the fast path failing to compile, a training loss
that became NaN); 130 interrupted (Ctrl-C). Errors print one line, `error: ...`, without a traceback (docs/errors.md has the table).
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
from tqdm import tqdm

from code import SamplingConfig, is_out_of_memory
from utils.errors import RunError, UsageError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_CHOICES = ("auto", *DTYPES)  # auto: per script, stated in its --help
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def exit_code(main: Callable[[argparse.Namespace], object], args: argparse.Namespace) -> int:
    """Run main(args): 0, or the exit status of its error, printed as one line. Under torchrun every rank meets
    the same bad input: rank 0 alone prints it; a failed run is printed by each rank it happened on (with its
    rank). Any other exception is raised (a bug: its traceback is wanted)."""
    rank = os.environ.get("RANK", "0")
    try:
        main(args)
        return 0
    except (UsageError, FileNotFoundError, NotADirectoryError) as e:
        return fail(e, EXIT_USAGE, rank, quiet_ranks=True)
    except KeyboardInterrupt:
        if rank == "0":
            print("interrupted: finished work is kept; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if is_out_of_memory(e):
            batch = getattr(args, "batch_size", None)
            return fail(f"out of memory ({one_line(e)}): use a smaller --batch_size"
                        f"{f' (now {batch})' if batch else ''}", EXIT_FAILED, rank)
        if isinstance(e, (RunError, OSError)):  # a write that failed (full disk, permissions), a compile, a NaN
            return fail(e, EXIT_FAILED, rank)
        raise


def exit_on_error(main: Callable[[argparse.Namespace], object], args: argparse.Namespace) -> None:
    """The scripts' entry point: main(args), exiting with exit_code's status when it is not 0."""
    code = exit_code(main, args)
    if code:
        sys.exit(code)


def one_line(e: BaseException | str) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def fail(e: BaseException | str, code: int, rank: str = "0", quiet_ranks: bool = False) -> int:
    """Bad input is the same on every rank (rank 0 says it); a failure may be one rank's own (each says it)."""
    if rank == "0":
        print(f"error: {e}", file=sys.stderr)
    elif not quiet_ranks:
        print(f"error: rank {rank}: {e}", file=sys.stderr)
    return code


class TqdmHandler(logging.Handler):
    """Writes above a progress bar instead of through it (to the sys.stderr of the moment)."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def setup_logging(is_main: bool = True, log_file: Path | None = None) -> None:
    """Messages at INFO from rank 0, WARNING from the others, on stderr. With `log_file` (the training scripts'
    OUTPUT_DIR/train.log, rank 0 only), the `training` logger writes there too, with times, and above the progress
    bar on stderr; the other ranks' training messages carry their rank."""
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, format="%(message)s")
    if log_file is None:
        return
    log = logging.getLogger("training")
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    log.propagate = False
    log.setLevel(logging.INFO if is_main else logging.ERROR)
    stderr = TqdmHandler()
    stderr.setFormatter(logging.Formatter("%(message)s" if is_main else f"[rank {os.environ.get('RANK')}] %(message)s"))
    log.addHandler(stderr)
    if is_main:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(log_file)
        file.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(file)


# ---- argument types ---------------------------------------------------------------------------------
MAX_SCALES = 256  # far above any model's (10 published): a longer per-scale list is a typo, never expanded


def per_scale(kind: type) -> Callable[[str], object]:
    """'600' -> 600; '1.1,1.1,1.0' -> a list; 'v*n' repeats: '1.1*7,1.0*3' is the published temperature list."""
    def parse(text: str):
        values = []
        for part in text.split(","):
            value, _, count = part.partition("*")
            try:
                n = int(count) if count else 1
                if n < 1:
                    raise ValueError
                if n > MAX_SCALES - len(values):
                    raise argparse.ArgumentTypeError(f"{text!r} gives more than {MAX_SCALES} values (one per scale)")
                values += [kind(value)] * n
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


def int_in(low: int, high: int, why: str = "") -> Callable[[str], int]:
    """An argparse type: an integer in low..high; `why` says where the upper limit comes from."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer in {low}..{high}{why}")
        return value
    parse.__name__ = "integer"
    return parse


INT_OR_RANGE = re.compile(r"(\d+)(?:-(\d+))?")
MAX_CLASS_ID = 2**20 - 1  # far above any model's classes (1000 published): checked before a range is expanded


def int_list(text: str) -> list[int]:
    """'207,360' or '0-9,20' (inclusive ranges) -> a list of integers >= 0."""
    out = []
    for part in text.split(","):
        m = INT_OR_RANGE.fullmatch(part.strip())
        if m is None:
            raise argparse.ArgumentTypeError(f"{part!r} is not a class id (an integer >= 0) or a range such as 0-9")
        start, stop = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if stop > MAX_CLASS_ID:
            raise argparse.ArgumentTypeError(f"class id {stop} is above {MAX_CLASS_ID} (models have far fewer classes)")
        if stop < start:
            raise argparse.ArgumentTypeError(f"range {part!r} is empty")
        out += range(start, stop + 1)
    return out


# ---- argument groups --------------------------------------------------------------------------------
MAX_SEED = 2**32 - 1  # torch's CPU generator keeps the low 32 bits of a seed, CUDA's 64: above, they would differ


def add_sampling_args(parser: argparse.ArgumentParser, *, cfg: float, top_k, top_p, temperature: str,
                      seed: int, max_seed: int = MAX_SEED, seed_why: str = " (the 32 bits torch's CPU generator "
                      "keeps)") -> None:
    g = parser.add_argument_group("sampling (top_k, top_p, temperature: a number, or a comma list with one "
                                  "value per scale)")
    g.add_argument("--cfg", type=float, default=cfg, help=f"classifier-free guidance scale (default {cfg})")
    g.add_argument("--top_k", type=per_scale(int), default=top_k, help=f"0 disables it (default {top_k})")
    g.add_argument("--top_p", type=per_scale(float), default=top_p, help=f"1 keeps every token (default {top_p})")
    g.add_argument("--temperature", type=per_scale(float), default=None,
                   help=f"applied after the top-k / top-p filter (default {temperature})")
    g.add_argument("--seed", type=int_in(0, max_seed, seed_why), default=seed,
                   help=f"random seed, 0..{max_seed} (default {seed})")
    g.add_argument("--more_smooth", action="store_true",
                   help="the published sampler's Gumbel-softmax smoothing of the next-scale input: smoother pictures, "
                        "not for FID (as published); eager path only")


def add_device_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("device")
    g.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    g.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                   help="compute precision: generation under torch.autocast with this dtype, as published (default "
                        "auto: fp16 on CUDA, as the published scripts; fp32 on CPU, which turns autocast off; the "
                        "training scripts' auto is bf16 on CUDA). The eager "
                        "path keeps fp32 weights; the fast path loads the linear weights in this dtype")
    g.add_argument("--no_tf32", dest="tf32", action="store_false",
                   help="keep CUDA's float32 matmuls and convolutions in full float32 (default: TF32, as the "
                        "published scripts set it; it affects what runs in float32, e.g. the VQVAE outside autocast)")


def published_numerics(device: torch.device, tf32: bool) -> bool:
    """TF32 for CUDA's float32 matmuls and convolutions and deterministic cuDNN algorithms, as the published scripts
    set them; whether TF32 is on. A process-wide setting: scripts call it once, before anything runs."""
    if device.type != "cuda":
        return False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    return tf32


def code_temperature(num_scales: int) -> list[float]:
    """The published CoDe schedule: 1.1 on all scales but the last three, 1.0 on those ([1.1]*7 + [1.0]*3)."""
    fine = min(3, num_scales)
    return [1.1] * (num_scales - fine) + [1.0] * fine


def sampling_config(args: argparse.Namespace, num_scales: int, default_temperature) -> SamplingConfig:
    temperature = args.temperature if args.temperature is not None else default_temperature
    sampling = SamplingConfig(cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, temperature=temperature,
                              more_smooth=getattr(args, "more_smooth", False))  # the miniature's tools lack it
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
    if device.type not in ("cuda", "cpu"):
        raise UsageError(f"--device {text}: only cuda, cuda:N and cpu are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {text}: CUDA is not available here; use --device cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UsageError(f"--device {text}: this machine has {count} CUDA device{'s' * (count != 1)} "
                         f"(cuda:0..cuda:{count - 1})")
    return device


def resolve_dtype(text: str | None, device: torch.device) -> torch.dtype:
    """--dtype of the inference scripts: auto (or None) is fp16 on CUDA, as published, fp32 elsewhere."""
    if text in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[text]


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
