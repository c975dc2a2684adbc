"""Metrics: one JSON line per logged step in metrics.jsonl (and TensorBoard when installed)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from alignloop.data.io import append_jsonl, atomic_path


class Tracker:
    """Writes metrics from the main process; `resume_from(step)` drops lines logged after it."""

    def __init__(self, out: Path, enabled: bool = True, tensorboard: bool = True):
        self.path = Path(out) / "metrics.jsonl"
        self.enabled = enabled
        self.start = time.time()
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(Path(out) / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.writer = None

    def resume_from(self, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        with atomic_path(self.path) as tmp:
            Path(tmp).write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time_s": round(time.time() - self.start, 3), **metrics}
        append_jsonl(self.path, row)
        if self.writer is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
