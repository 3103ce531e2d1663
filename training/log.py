"""Training logs from rank 0: the `training` logger (cli.args.setup_logging sends it to stderr and OUTPUT_DIR/train.log)
and the metrics in OUTPUT_DIR/log.jsonl."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from utils.dist import DistInfo
from utils.files import atomic_write

log = logging.getLogger("training")
CURRENT = ("lr", "lambda")  # logged at the current step; the other metrics are averaged since the last line


class MetricLog:
    """Collects per-step metrics and writes one line every `every` steps (and on demand) from rank 0.

    A run resumed at step s first drops the lines of steps after s (written before the kill, about to be
    replayed), so that log.jsonl reads as one uninterrupted run.
    """

    def __init__(self, info: DistInfo, output_dir: Path, total_steps: int, steps_per_epoch: int, start_step: int = 0):
        self.info, self.path, self.total, self.spe = info, output_dir / "log.jsonl", total_steps, steps_per_epoch
        self.window: dict[str, list[float]] = {}
        self.t, self.tokens = time.perf_counter(), 0
        if info.is_main and self.path.is_file():
            dropped = trim_log(self.path, start_step)
            if dropped:
                log.info("%s at step %d: dropped %d lines of %s that an interrupted run wrote after it",
                         "resuming" if start_step else "starting", start_step, dropped, self.path)

    def add(self, metrics: dict[str, float], tokens: int) -> None:
        for k, v in metrics.items():
            self.window.setdefault(k, []).append(v)
        self.tokens += tokens

    def flush(self, step: int) -> None:
        """One line with the window's means, lr / lambda at `step`, and tokens per second since the last line."""
        now = time.perf_counter()
        record = {k: v[-1] if k in CURRENT else sum(v) / len(v) for k, v in self.window.items()}
        record["tok_s"] = self.tokens / max(now - self.t, 1e-9)
        self.window, self.t, self.tokens = {}, now, 0
        self.write(step, record)

    def write(self, step: int, record: dict[str, float]) -> None:
        if not self.info.is_main:
            return
        record = {"step": step, "epoch": round(step / self.spe, 4), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        text = " | ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "step")
        log.info("step %d/%d | %s", step, self.total, text)


def trim_log(path: Path, step: int) -> int:
    """Keep the records of steps <= `step` (and unreadable lines, a torn last line excepted); returns how many
    were dropped. Rewritten atomically."""
    lines = path.read_text().splitlines()
    keep = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            if i == len(lines) - 1:
                continue  # the kill tore the last line
            keep.append(line)
            continue
        if not isinstance(record, dict) or record.get("step", 0) <= step:
            keep.append(line)
    if len(keep) < len(lines):
        text = "".join(f"{line}\n" for line in keep)
        atomic_write(path, lambda f: f.write(text.encode()))
    return len(lines) - len(keep)
