"""Per-GPU memory of fine-tuning's model states, counted on the meta device (no GPU, no weights).

    python benchmarks/finetune_memory.py                 # markdown table for 1, 2, 4, 8 GPUs
    python benchmarks/finetune_memory.py --gpus 1 16 --json memory.json

For the d30 drafter and the d16 refiner (+ its frozen d30 teacher): the trained model's float32 weights, float32
gradients and AdamW's two float32 moments, sharded FSDP2-style (every parameter split on its first dimension into
ceil(rows / GPUs) rows per GPU, the last GPU's share padded), and the frozen models training loads on every GPU in
float32: the VQVAE, and the teacher, counted both replicated (a full copy per GPU, as DDP does) and sharded like the
student. Buffers (attention mask, scale ids) are full on every GPU. Not counted: activations (they depend on the batch
and are not measured here), AdamW's per-parameter step counters (4 bytes per tensor), communication buffers, the
CUDA context and allocator slack.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import build_vae, build_var  # noqa: E402

FP32 = 4
GiB = 2**30
CARDS_GB = (24, 40, 48, 80)  # marketed sizes, in 10^9 bytes


@dataclass(frozen=True)
class Row:
    job: str  # "drafter d30" or "refiner d16"
    gpus: int
    params: int  # the trained model's parameter count
    weights: int  # bytes per GPU
    grads: int
    adam: int  # both moments
    buffers: int  # full on every GPU
    vae: int  # the frozen VQVAE, full on every GPU
    teacher_replicated: int  # 0 for the drafter
    teacher_sharded: int

    @property
    def trained(self) -> int:
        return self.weights + self.grads + self.adam

    def total(self, teacher_sharded: bool) -> int:
        teacher = self.teacher_sharded if teacher_sharded else self.teacher_replicated
        return self.trained + self.buffers + self.vae + teacher


def shard_elements(model: nn.Module, gpus: int) -> int:
    """Elements of one GPU's shard: each parameter's first dimension split into ceil(rows / gpus) rows."""
    total = 0
    for p in model.parameters():
        rows = p.shape[0] if p.dim() else 1
        total += math.ceil(rows / gpus) * (p.numel() // max(rows, 1))
    return total


def buffer_bytes(model: nn.Module) -> int:
    return sum(b.numel() * b.element_size() for b in model.buffers())


def rows(gpus: list[int]) -> list[Row]:
    vae = build_vae(device="meta")
    vae_bytes = sum(p.numel() for p in vae.parameters()) * FP32 + buffer_bytes(vae)
    d30, d16 = build_var(30, device="meta"), build_var(16, device="meta")
    out = []
    for job, model, teacher in (("drafter d30", d30, None), ("refiner d16", d16, d30)):
        for n in gpus:
            shard = shard_elements(model, n) * FP32
            t_full = sum(p.numel() for p in teacher.parameters()) * FP32 + buffer_bytes(teacher) if teacher else 0
            t_shard = shard_elements(teacher, n) * FP32 + buffer_bytes(teacher) if teacher else 0
            out.append(Row(job, n, sum(p.numel() for p in model.parameters()), shard, shard, 2 * shard,
                           buffer_bytes(model), vae_bytes, t_full, t_shard))
    return out


def fits(total: int) -> str:
    return " ".join(str(gb) for gb in CARDS_GB if total <= gb * 10**9) or "none"


def table(result: list[Row]) -> str:
    lines = ["| job | GPUs | weights | grads | AdamW | buffers + VQVAE | teacher (replicated / sharded) | "
             "total, teacher replicated | total, teacher sharded | cards (GB) whose memory exceeds it, teacher replicated |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result:
        teacher = f"{r.teacher_replicated / GiB:.2f} / {r.teacher_sharded / GiB:.2f}" if r.teacher_replicated else "-"
        lines.append(f"| {r.job} | {r.gpus} | {r.weights / GiB:.2f} | {r.grads / GiB:.2f} | {r.adam / GiB:.2f} | "
                     f"{(r.buffers + r.vae) / GiB:.2f} | {teacher} | {r.total(False) / GiB:.2f} | "
                     f"{r.total(True) / GiB:.2f} | {fits(r.total(False))} |")
    return "\n".join(lines) + "\n\nGiB per GPU (2^30 bytes); card sizes in 10^9 bytes; activations not included."


def main(argv: list[str] | None = None) -> list[Row]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8], help="GPU counts (default 1 2 4 8)")
    p.add_argument("--json", default=None, help="also write the rows (bytes) to this file")
    args = p.parse_args(argv)
    if any(n < 1 for n in args.gpus):
        p.error("--gpus: counts must be >= 1")
    with torch.device("meta"):
        result = rows(args.gpus)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps([{**asdict(r), "total_teacher_replicated": r.total(False),
                                                "total_teacher_sharded": r.total(True)} for r in result], indent=1))
    return result


if __name__ == "__main__":
    main()
