"""Load time and peak resident memory of a VAR checkpoint as PyTorch's .pth and as safetensors.

    python benchmarks/checkpoint_load.py --dir /tmp/ckpt_bench              # d30-sized, random weights (2 x 8 GB)
    python benchmarks/checkpoint_load.py --dir /tmp/ckpt_bench --depth 16

Writes one random VAR of --depth in both formats (kept in --dir for later runs), then for each format starts a fresh
interpreter that runs models.load_var on the file and reports: the seconds load_var took, the seconds to then read
every weight once (load_var memory-maps both formats, so pages come from disk on first use), and the process's peak
resident set (ru_maxrss, file-backed pages of the mapping included) after each. Each file is read once beforehand
so that both start from a warm page cache, and torch's one-time start-up (a meta-device model
built first) is not counted; --repeats fresh processes per format, medians printed.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import build_var, load_var  # noqa: E402
from utils.checkpoint import atomic_save, save_safetensors  # noqa: E402

FORMATS = {"pth": "var.pth", "safetensors": "var.safetensors"}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(path: Path) -> dict[str, float]:
    """In this process: load_var, then read every tensor once (torch's one-time start-up paid beforehand)."""
    build_var(1, device="meta")
    base = peak_rss_mib()
    t0 = time.perf_counter()
    model = load_var(path)
    t1 = time.perf_counter()
    rss_load = peak_rss_mib()
    with torch.no_grad():
        checksum = sum(float(t.float().sum()) for t in model.state_dict().values() if t.is_floating_point())
    t2 = time.perf_counter()
    return {"load_s": t1 - t0, "touch_s": t2 - t1, "rss_start_mib": base, "rss_after_load_mib": rss_load,
            "rss_after_touch_mib": peak_rss_mib(), "checksum": checksum}


def write_files(folder: Path, depth: int) -> dict[str, Path]:
    paths = {k: folder / name for k, name in FORMATS.items()}
    stamp = folder / f"depth{depth}.json"
    if stamp.is_file() and all(p.is_file() for p in paths.values()):
        return paths
    torch.manual_seed(0)
    model = build_var(depth)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    atomic_save(model.state_dict(), paths["pth"])
    save_safetensors(model.state_dict(), paths["safetensors"])
    stamp.write_text(json.dumps({"depth": depth}))
    return paths


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(2**26):
            pass


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", required=True, help="where the two files are written (and reused)")
    p.add_argument("--depth", type=int, default=30, help="VAR depth (default 30: 2.0 B parameters, 8 GB)")
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per format (default 3)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(Path(args.child))))
        return {}
    paths = write_files(Path(args.dir), args.depth)
    runs = {k: [] for k in paths}
    for _ in range(args.repeats):
        for kind, path in paths.items():  # alternating, so that drift hits both
            warm(path)
            out = subprocess.run([sys.executable, __file__, "--dir", args.dir, "--child", str(path)],
                                 check=True, capture_output=True, text=True).stdout
            runs[kind].append(json.loads(out.strip().splitlines()[-1]))
    summary = {kind: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for kind, rs in runs.items()}
    size = {kind: path.stat().st_size / 2**30 for kind, path in paths.items()}
    print(f"VAR-d{args.depth}, random weights; median of {args.repeats} fresh processes, warm page cache")
    print("| format | file GiB | load_var s | + read every weight s | peak RSS after load MiB | after reading MiB |")
    print("|---|---|---|---|---|---|")
    for kind, s in summary.items():
        print(f"| {kind} | {size[kind]:.2f} | {s['load_s']:.2f} | {s['touch_s']:.2f} | {s['rss_after_load_mib']:.0f} "
              f"| {s['rss_after_touch_mib']:.0f} |")
    if len({round(s["checksum"], 3) for s in summary.values()}) != 1:
        raise SystemExit("error: the two files hold different weights")
    return summary


if __name__ == "__main__":
    main()
