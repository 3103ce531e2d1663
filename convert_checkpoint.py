"""Convert a checkpoint between PyTorch's format and safetensors (the output's suffix decides), bit for bit.

    python convert_checkpoint.py var_d30.pth var_d30.safetensors     # a published name, a path or hf://...
    python convert_checkpoint.py drafter_8.safetensors drafter_8.pth  # back, in the official layout

A training checkpoint (ckpt_last.pth) gives its weights and its model config; to .pth the result is the plain
state dict the published code loads. The output is read back and compared tensor by tensor before the command
reports success.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cli.args import UsageError, exit_on_error
from utils.checkpoint import CheckpointError, atomic_save, read_checkpoint, save_safetensors
from utils.hub import resolve_checkpoint

FORMATS = {".safetensors": "safetensors", ".pth": "pytorch", ".pt": "pytorch"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="a checkpoint: path, published name or hf://owner/repo/file")
    parser.add_argument("output", help="the file to write: .safetensors, or .pth / .pt")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--ckpt_dir", default=None, help="a folder holding published files, for offline use")
    return parser.parse_args(argv)


def convert(source: str, output: str | Path, overwrite: bool = False, ckpt_dir=None) -> Path:
    output = Path(output)
    kind = FORMATS.get(output.suffix)
    if kind is None:
        raise UsageError(f"output {output}: name it .safetensors or .pth (the suffix picks the format)")
    path = resolve_checkpoint(source, ckpt_dir)
    if output.exists() and (output.resolve() == path.resolve() or not overwrite):
        raise UsageError(f"output {output} exists: choose another name" + ("" if output.resolve() == path.resolve()
                                                                          else " or add --overwrite"))
    sd, extras = read_checkpoint(path)
    if kind == "safetensors":
        config = extras.get("config")
        save_safetensors(sd, output, {"config": config} if isinstance(config, dict) else None)
    else:
        atomic_save(dict(sd), output)
    check_same(sd, read_checkpoint(output)[0], output)
    return output


def check_same(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], path: Path) -> None:
    bad = [k for k in expected if k not in found or not same_bits(found[k], expected[k])]
    if bad or found.keys() != expected.keys():
        raise CheckpointError(f"{path} does not read back as written (tensors {bad[:5]} differ): disk full?")


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (NaNs included)."""
    return (a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)))


def main(args: argparse.Namespace) -> None:
    out = convert(args.input, args.output, args.overwrite, args.ckpt_dir)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    exit_on_error(main, parse_args())
