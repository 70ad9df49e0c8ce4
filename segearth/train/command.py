"""``segearth train``: the command-line entry point (registered in :mod:`segearth.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..data.registry import DATASETS
from ..errors import exit_with_user_error
from ..presets import preset_names


def train(
    config: Annotated[Path, typer.Option("--config", "-c", help="Training YAML (see configs/train/).")],
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest complete checkpoint in "
                                         "log.output_dir (fresh start if there is none).")] = False,
    overrides: Annotated[list[str] | None, typer.Argument(help=(
        "Config overrides key.sub=value, e.g. optim.lr=5e-5 data.root=/data log.output_dir=runs/x. "
        f"model.name: a preset ({', '.join(preset_names())}) or a checkpoint folder; "
        f"data.name: {', '.join(DATASETS)}."))] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False,
) -> None:
    """Train or fine-tune SegEarth-R1 with the official recipe (spec §4) on any scale.

    One process on CPU or GPU:

        segearth train --config configs/train/landcover_small.yaml data.root=../shared/data

    Several GPUs, DeepSpeed ZeRO-2, FSDP or several nodes: launch the same command through
    accelerate with one of the shipped engine configs (num_processes, machine_rank, main address):

        accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml \\
            -m segearth.train --config configs/train/earthreason.yaml

    The config is validated before anything heavy starts. Checkpoints go to
    OUTPUT_DIR/checkpoint-STEP/ (loadable by `segearth predict/eval`, plus the optimizer, scheduler,
    RNG and data-order state); logs to train_log.csv, eval_log.csv, tensorboard/ and
    val_predictions/*.png. A killed run continues exactly where it stopped with --resume.
    """
    from .config import load_train_config

    try:
        cfg = load_train_config(config, overrides or [])
        from .trainer import train as run

        run(cfg, resume=resume)
    except Exception as exc:  # sorted there: user error (one line) or bug
        exit_with_user_error(exc, debug)
