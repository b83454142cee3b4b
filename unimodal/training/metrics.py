"""What a run reports: a tqdm bar, `metrics.jsonl`, TensorBoard scalars and a loss-curve PNG.

Only rank 0 writes; other ranks get a `MetricsLogger` that does nothing. `metrics.jsonl` holds one
JSON object per line: training records ({"step", "loss", "lm_loss", "denoise_loss", "lr", ...})
and events ({"step", "event": "nonfinite_loss" | "checkpoint" | "stopped" | ..., "message"}).
On resume, records after the checkpoint's step (written by the killed run) are dropped first, so
the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss_curves.png"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (a torn last line from a killed run is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only records up to `last_step` (atomic rewrite)."""
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


class MetricsLogger:
    """Progress bar + JSONL + TensorBoard for one run folder.

    Args:
        run_dir: where metrics.jsonl and tensorboard/ go.
        total_steps, start_step: for the bar and its ETA (a resumed run starts part-way).
        enabled: False on ranks other than 0.
    """

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, enabled: bool = True,
                 progress_bar: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = run_dir / METRICS_FILE
        self.bar = None
        self.writer = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if start_step > 0:
            truncate_metrics(self.path, start_step)
        elif self.path.exists():
            self.path.unlink()
        self.file = open(self.path, "a")
        if progress_bar:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=start_step or None)
            except ImportError:  # tensorboard is a declared dependency; keep training without it
                log.warning("tensorboard is not installed: scalars go to metrics.jsonl only")

    def advance(self, step: int, postfix: dict[str, float]) -> None:
        """One optimizer step done: move the bar and show the latest numbers."""
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def record(self, step: int, values: dict[str, Any]) -> None:
        """A training record: one JSONL line and one TensorBoard scalar per number."""
        if not self.enabled:
            return
        record = {"step": step, **values, "time": round(time.time(), 3)}
        self._write(record)
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"train/{key}" if "/" not in key else key, value, step)

    def event(self, step: int, kind: str, message: str = "", **extra: Any) -> None:
        """A notable event (non-finite loss, checkpoint, stop); also logged."""
        if not self.enabled:
            return
        self._write({"step": step, "event": kind, "message": message, **extra, "time": round(time.time(), 3)})
        if message:
            self.write_line(f"[step {step}] {kind}: {message}")

    def write_line(self, text: str) -> None:
        """Print without breaking the progress bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def _write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        self.file.close()


def plot_losses(metrics_path: str | Path, out_path: str | Path) -> Path | None:
    """loss, lm_loss and denoise_loss against step as a PNG; None when there is nothing to plot."""
    records = [r for r in read_metrics(metrics_path) if "loss" in r]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for axis, key in zip(axes, ("loss", "lm_loss", "denoise_loss")):
        axis.plot(steps, [r.get(key, float("nan")) for r in records], linewidth=1.2)
        axis.set_title(key)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    axes[0].set_yscale("log")
    figure.tight_layout()
    out_path = Path(out_path)
    figure.savefig(out_path, dpi=110)
    plt.close(figure)
    return out_path
