"""What a run reports: a CSV row per logged step, TensorBoard scalars, a progress bar, and the split of
step time into waiting for data and computing. Only the main process writes."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from tqdm.auto import tqdm

from ..files import atomic_path

__all__ = ["RunLog", "read_log"]

logger = logging.getLogger(__name__)

LOG_FILE = "log.csv"


def read_log(output_dir: str | os.PathLike) -> list[dict]:
    """The rows of a run's ``log.csv``, numbers as floats (``step`` as int)."""
    with open(Path(output_dir) / LOG_FILE, newline="") as f:
        return [{k: int(v) if k == "step" else float(v) for k, v in row.items()} for row in csv.DictReader(f)]


class RunLog:
    """Logging of one run from ``start_step``; rows after it (left by a killed run) are dropped."""

    def __init__(self, output_dir: Path, start_step: int, total_steps: int, *, enabled: bool, progress: bool,
                 tensorboard: bool):  # fmt: skip
        self.path = Path(output_dir) / LOG_FILE
        self.enabled = enabled
        self.fields: list[str] | None = None
        self.writer = None
        self.data_s = self.compute_s = 0.0
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not (enabled and progress), unit="step")
        if not enabled:
            return
        if self.path.exists():
            self._truncate(start_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.warning("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
            else:
                self.writer = SummaryWriter(str(Path(output_dir) / "tensorboard"), purge_step=start_step + 1)

    def _truncate(self, start_step: int) -> None:
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            self.fields = reader.fieldnames
            rows = [row for row in reader if int(row["step"]) <= start_step]
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self.fields)
            writer.writeheader()
            writer.writerows(rows)

    def step(self, step: int, metrics: dict, data_s: float, compute_s: float, samples: int, write: bool) -> None:
        """Record one optimizer step (``write``: also a CSV row and TensorBoard scalars)."""
        self.data_s += data_s
        self.compute_s += compute_s
        row = {**metrics, "data_s": data_s, "compute_s": compute_s,
               "samples_per_s": samples / max(data_s + compute_s, 1e-9)}  # fmt: skip
        self.bar.update(1)
        if not self.enabled:
            return
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", sps=f"{row['samples_per_s']:.1f}")
        if not write:
            return
        if self.fields is None:
            self.fields = ["step", *sorted(row)]
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({"step": step, **row})
        if self.writer is not None:
            for key, value in row.items():
                self.writer.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        self.bar.close()
        total = self.data_s + self.compute_s
        if self.enabled and total > 0:
            logger.info(
                "step time: %.1f s waiting for data (%.0f%%), %.1f s computing",
                self.data_s,
                100 * self.data_s / total,
                self.compute_s,
            )
        if self.writer is not None:
            self.writer.close()
