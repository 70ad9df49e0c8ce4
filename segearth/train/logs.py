"""What a person watches during training: a rich progress bar, ``train_log.csv``, ``eval_log.csv``
and TensorBoard events (``output_dir/tensorboard``). Only the main process writes."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

TRAIN_FIELDS = ["step", "epoch", "lr", "total", "loss_mask", "loss_dice", "loss_llm", "samples_per_s"]


class _Csv:
    """Append-only CSV that survives restarts: a resumed run drops rows beyond its start step."""

    def __init__(self, path: Path, fields: list[str], resume_step: int) -> None:
        self.path, self.fields = path, fields
        rows: list[dict[str, str]] = []
        if resume_step > 0 and path.is_file():
            with path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore").writerow(row)


class RunLogger:
    """Progress bar + CSV + TensorBoard. Construct on every process; only ``enabled`` ones write."""

    def __init__(self, output_dir: Path, total_steps: int, start_step: int, enabled: bool, tensorboard: bool,
                 eval_fields: list[str]) -> None:
        self.enabled = enabled
        self.console = Console(stderr=True)
        self.progress: Progress | None = None
        self.tb = None
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        self.train_csv = _Csv(output_dir / "train_log.csv", TRAIN_FIELDS, start_step)
        self.eval_csv = _Csv(output_dir / "eval_log.csv", ["step", *eval_fields], start_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(output_dir / "tensorboard"), purge_step=start_step or None)
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console,
            refresh_per_second=2,
        )
        self.task = self.progress.add_task("train", total=total_steps, completed=start_step, info="")
        self.progress.start()

    def print(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, highlight=False)

    def advance(self, step: int, info: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step, info=info)

    def log_train(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.train_csv.write(row)
        if self.tb is not None:
            for key in TRAIN_FIELDS[2:]:
                if row.get(key) is not None:
                    self.tb.add_scalar(f"train/{key}", row[key], row["step"])

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.eval_csv.write({"step": step, **metrics})
        if self.tb is not None:
            for key, value in metrics.items():
                self.tb.add_scalar(f"val/{key}", value, step)
        shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("gIoU", "cIoU") if k in metrics)
        self.print(f"step {step}: validation {shown} ({int(metrics.get('n', 0))} samples)")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.tb is not None:
            self.tb.close()
