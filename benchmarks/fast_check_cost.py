"""What the fast path's run-time check costs, in batches of generation, and its share of a 50,000-image run.

    python benchmarks/fast_check_cost.py                     # the miniature's d6 -> d2 pair, batch 64, on the CPU
    python benchmarks/fast_check_cost.py --device cuda --batch_size 64 --repeats 5

Times --repeats batches generated on the fast path with the check off, then --repeats checks
(code.fast_check.check_fast_path: a teacher-forced fast pass of the batch and an eager pass of its first 8
images) on the same batch, alternating, and prints the median check time in batches. A run of --images images checks
on its first batch, on its last (a new batch size when --images is not a multiple of the batch) and every 200
batches; the share is those checks' cost over the run's generation.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from code import CollaborativeDecoder, FastPath  # noqa: E402
from code.fast_check import check_fast_path  # noqa: E402
from code.sampling import SamplingConfig  # noqa: E402
from models import load_vae, load_var  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "miniature" / "checkpoints"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--batch_size", type=int, default=64, help="images per batch (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed batches and checks, alternating (median)")
    p.add_argument("--images", type=int, default=50_000, help="the run the share is projected for")
    p.add_argument("--recheck_every", type=int, default=200, help="batches between re-checks (the default path's)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    vae = load_vae(SHIPPED / "vqvae.pth", device=device).eval()
    models = [load_var(SHIPPED / f"{name}.pth", device=device).eval() for name in ("drafter_3", "refiner_3")]
    decoder = CollaborativeDecoder(vae, models, draft_steps=[3])
    path = FastPath(decoder, check=False)
    labels = torch.arange(args.batch_size, device=device) % models[0].config.num_classes
    sampling = SamplingConfig(cfg=2.0)
    gen_s, check_s = [], []
    with torch.no_grad():
        decoder(labels, seed=0, fast=path)  # warm-up: builds the steps
        for r in range(args.repeats):
            sync(device); t = time.perf_counter()
            state = decoder.state(labels, seed=r, sampling=sampling, fast=path)
            decoder.decode(state.f_hat, fast=path)
            sync(device); gen_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            report = check_fast_path(decoder, path, state, sampling)
            sync(device); check_s.append(time.perf_counter() - t)
            assert report.passed, report.failures()
    batch, check = statistics.median(gen_s), statistics.median(check_s)
    batches = -(-args.images // args.batch_size)
    checks = 1 + (args.images % args.batch_size != 0) + (batches - 1) // args.recheck_every
    share = checks * check / (batches * batch)
    print(f"device {device}, batch {args.batch_size}: a batch {batch * 1e3:.0f} ms, a check {check * 1e3:.0f} ms "
          f"= {check / batch:.2f} batches; a {args.images}-image run: {batches} batches, {checks} checks, "
          f"{share:.2%} of its generation time")
    return {"batch_s": batch, "check_s": check, "checks": checks, "share": share}


if __name__ == "__main__":
    main()
