"""What a training run reports: metrics.jsonl + TensorBoard while it runs, a `TrainSummary` at the end."""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainSummary:
    """What a `train` call did (returned on every rank; metrics only on rank 0)."""

    output_dir: Path
    start_iter: int
    end_iter: int
    max_iter: int
    seconds: float
    images_per_second: float
    global_batch_size: int
    world_size: int
    final_losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, dict[str, float | None]] | None = None
    final_checkpoint: Path | None = None

    @property
    def iterations(self) -> int:
        return self.end_iter - self.start_iter

    def table(self) -> str:
        rows = [
            ("iterations", f"{self.start_iter} -> {self.end_iter} of {self.max_iter}"),
            ("processes x images", f"{self.world_size} x {self.global_batch_size // max(self.world_size, 1)} "
                                   f"(global batch {self.global_batch_size})"),
            ("time", format_seconds(self.seconds)),
            ("images / s", f"{self.images_per_second:.2f}"),
        ]
        for name, value in self.final_losses.items():
            rows.append((name, f"{value:.4f}"))
        if self.metrics:
            for iou_type, values in self.metrics.items():
                ap = ", ".join(f"{k} {'-' if v is None else f'{100 * v:.1f}'}" for k, v in values.items())
                rows.append((f"{iou_type} AP", ap))
        if self.final_checkpoint:
            rows.append(("checkpoint", str(self.final_checkpoint)))
        width = max(len(k) for k, _ in rows)
        lines = ["training summary", "-" * (width + 40)]
        lines += [f"{k:<{width}}  {v}" for k, v in rows]
        return "\n".join(lines)


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class MetricsWriter:
    """metrics.jsonl + TensorBoard on rank 0; a no-op elsewhere."""

    def __init__(self, output_dir: Path, enabled: bool, start_iter: int, tensorboard: bool = True):
        self.enabled = enabled
        self.path = output_dir / METRICS_FILE
        self.tb = None
        if not enabled:
            return
        if start_iter > 0 and self.path.is_file():
            # Drop what a killed run logged after its last checkpoint, so the file stays one history.
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("iteration", 0) <= start_iter]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif start_iter == 0 and self.path.exists():
            self.path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(output_dir / "tensorboard"), purge_step=start_iter or None)
            except Exception as e:  # noqa: BLE001 - tensorboard is optional
                logger.warning("TensorBoard logging disabled: %s", e)

    def write(self, iteration: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"iteration": iteration, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and v is not None and math.isfinite(v):
                    self.tb.add_scalar(k, v, iteration)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
