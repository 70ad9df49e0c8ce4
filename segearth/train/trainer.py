"""The training loop, on Hugging Face ``accelerate``.

The same code runs as one CPU process (``python -m segearth.train`` / ``segearth train``), as DDP on
several GPUs or CPU (gloo) processes, under DeepSpeed ZeRO-2 or FSDP, and across nodes: the engine
is chosen by ``accelerate launch --config_file configs/accelerate/<engine>.yaml``, never here.

One *step* is one optimizer step = ``grad_accum`` micro-batches of ``batch_size`` samples per
process. Intervals, the schedule and checkpoints count steps.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator, DistributedType
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from transformers import get_cosine_schedule_with_warmup

from ..errors import ConfigError
from ..modeling.prompt import Tokenizer
from ..modeling.segearth_r1 import SegEarthR1
from .augment import AugmentedDataset
from .checkpointing import (
    ACCELERATE_DIR,
    clean_staging,
    latest_checkpoint,
    prune,
    publish,
    read_state,
    temp_dir,
    write_state,
)
from .collate import Collator
from .config import TrainConfig
from .data import BatchOrder, LetterboxedDataset, build_samples
from .evaluate import evaluate, save_grid
from .logs import RunLogger
from .modelsetup import (
    TrainingModule,
    apply_freezing,
    apply_lora,
    build_model,
    export_pretrained,
    set_train_mode,
)

LOSS_KEYS = ("total", "loss_mask", "loss_dice", "loss_llm")


@dataclass
class TrainResult:
    """What a finished (or resumed-and-finished) run reports."""

    output_dir: Path
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)  # logged training rows of this process
    evals: list[dict[str, float]] = field(default_factory=list)  # validation summaries with "step"


def _schedule_length(cfg: TrainConfig, num_samples: int, world: int) -> tuple[int, int]:
    """``(micro-batches per epoch, total optimizer steps)``."""
    o = cfg.optim
    per_epoch = num_samples // (o.batch_size * world)
    if per_epoch == 0:
        raise ConfigError(f"{num_samples} training samples are fewer than one global batch ({o.batch_size} x {world})")
    total = o.max_steps if o.max_steps is not None else int(o.epochs * per_epoch) // o.grad_accum
    if total <= 0:
        raise ConfigError(f"the run would have no optimizer step ({per_epoch} micro-batches per epoch)")
    return per_epoch, total


def _prepare_model(cfg: TrainConfig) -> tuple[TrainingModule, Tokenizer]:
    model, tokenizer = build_model(cfg.model, cfg.optim.seed)
    if cfg.lora.enabled:
        apply_lora(model, cfg.lora)
    apply_freezing(model, cfg.freeze, cfg.lora)
    if cfg.optim.gradient_checkpointing:
        model.llm.enable_gradient_checkpointing()  # refused at config time when the LLM cannot
    return TrainingModule(model, cfg.optim.num_points), tokenizer


def _save(accelerator: Accelerator, module, tokenizer, cfg: TrainConfig, step: int, state: dict[str, Any]) -> None:
    """Atomic checkpoint (see :mod:`segearth.train.checkpointing`); collective, call on every process."""
    out = Path(cfg.log.output_dir)
    staging = temp_dir(out, step)
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging / ACCELERATE_DIR))
    if accelerator.distributed_type == DistributedType.FSDP:
        # Parameters are sharded: gather a full copy into a fresh CPU model for the export.
        full = accelerator.get_state_dict(module)
        if accelerator.is_main_process:
            export_model, _ = _prepare_model(cfg)
            export_model.load_state_dict(full)
            export_pretrained(export_model.model, staging, tokenizer)
    elif accelerator.is_main_process:
        export_pretrained(accelerator.unwrap_model(module).model, staging, tokenizer)
    if accelerator.is_main_process:
        write_state(staging, state)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        publish(staging, out / f"checkpoint-{step}")
        prune(out, cfg.log.keep_last)
    accelerator.wait_for_everyone()


def train(cfg: TrainConfig, resume: bool = False) -> TrainResult:
    """Run (or resume) training as configured; returns the logged history. See the module docstring."""
    o, out = cfg.optim, Path(cfg.log.output_dir)
    accelerator = Accelerator(
        mixed_precision=o.mixed_precision,
        gradient_accumulation_steps=o.grad_accum,
        step_scheduler_with_optimizer=False,  # our schedule already counts optimizer steps
    )
    set_seed(o.seed)
    module, tokenizer = _prepare_model(cfg)
    model: SegEarthR1 = module.model
    size = model.cfg.image_size
    train_samples = build_samples(cfg.data, cfg.data.train_split, cfg.data.max_train_samples)
    train_ds: LetterboxedDataset | AugmentedDataset = (
        AugmentedDataset(train_samples, size, o.seed, cfg.data.augment_min_crop, sensor=cfg.data.augment_sensor)
        if cfg.data.augment
        else LetterboxedDataset(train_samples, size, cfg.data.cache))
    val_ds = None
    if cfg.data.val_split:
        val_ds = LetterboxedDataset(build_samples(cfg.data, cfg.data.val_split, cfg.data.max_val_samples),
                                    size, cfg.data.cache)
    world = accelerator.num_processes
    _, total_steps = _schedule_length(cfg, len(train_ds), world)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=o.lr,
                                  betas=(o.betas[0], o.betas[1]), eps=o.eps, weight_decay=o.weight_decay)
    # HF's "cosine": linear warm-up over ceil(ratio * total) steps, then cosine decay to 0.
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(o.warmup_ratio * total_steps), total_steps)
    module, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)

    start_step = 0
    if accelerator.is_main_process:
        clean_staging(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    accelerator.wait_for_everyone()
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is not None:
        accelerator.load_state(str(ckpt / ACCELERATE_DIR))  # weights, optimizer, scheduler, RNG
        start_step = int(read_state(ckpt)["step"])
    logger = RunLogger(out, total_steps, start_step, accelerator.is_main_process, cfg.log.tensorboard,
                       ["n", "gIoU", "cIoU", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9"])
    if resume:
        logger.print(f"resuming from {ckpt} at step {start_step}" if ckpt
                     else f"no checkpoint in {out}; starting fresh")
    logger.print(f"{len(train_ds)} training samples, {world} process(es), {total_steps} steps, "
                 f"trainable parameters {sum(p.numel() for p in model.parameters() if p.requires_grad):,}")

    order = BatchOrder(len(train_ds), o.batch_size, world, accelerator.process_index, o.seed,
                       start_step * o.grad_accum, total_steps * o.grad_accum, with_epoch=cfg.data.augment)
    # A private generator: creating the iterator must not consume the global RNG that resume restores.
    collator = Collator(tokenizer, task=model.cfg.prompt_task)
    loader = DataLoader(train_ds, batch_sampler=order, collate_fn=collator, num_workers=cfg.data.num_workers,
                        generator=torch.Generator(), pin_memory=accelerator.device.type == "cuda")
    result = TrainResult(out, total_steps)
    step, micro = start_step, start_step * o.grad_accum
    window = {k: 0.0 for k in LOSS_KEYS}
    window_micro, window_start = 0, time.perf_counter()
    set_train_mode(model, cfg.freeze)

    def run_eval(at: int) -> None:
        if val_ds is None:
            return
        module.eval()
        metrics, visuals = evaluate(accelerator, module, val_ds, collator, o.batch_size, cfg.log.num_vis)
        set_train_mode(model, cfg.freeze)
        result.evals.append({"step": at, **metrics})
        logger.log_eval(at, metrics)
        if accelerator.is_main_process:
            save_grid(visuals, out / "val_predictions" / f"step-{at:07d}.png",
                      f"step {at}: gIoU {metrics['gIoU']:.4f} cIoU {metrics['cIoU']:.4f}")

    for batch in loader:
        batch = batch.to(accelerator.device)
        # Official normaliser: local target count, all-reduced and averaged over processes, at least 1.
        num_masks = accelerator.reduce(torch.tensor(float(len(batch)), device=accelerator.device), "sum")
        num_masks = max(float(num_masks) / world, 1.0)
        with accelerator.accumulate(module):
            losses = module(batch.images, batch.input_ids, batch.attention_mask, batch.refer_ids, batch.answer_ids,
                            labels=batch.labels, masks=batch.masks, num_masks=num_masks)
            accelerator.backward(losses["total"])
            if accelerator.sync_gradients and o.max_grad_norm is not None:
                accelerator.clip_grad_norm_(module.parameters(), o.max_grad_norm)
            optimizer.step()
            if accelerator.sync_gradients:
                scheduler.step()
            optimizer.zero_grad()
        micro += 1
        window_micro += 1
        for k in LOSS_KEYS:
            window[k] += float(losses[k].detach())
        if not accelerator.sync_gradients:
            continue
        step += 1
        where = order.locate(micro)
        if step % cfg.log.log_every == 0 or step == total_steps:
            means = accelerator.reduce(torch.tensor([window[k] / window_micro for k in LOSS_KEYS],
                                                    device=accelerator.device), "mean").tolist()
            elapsed = time.perf_counter() - window_start
            row = {"step": step, "epoch": micro / order.per_epoch, "lr": scheduler.get_last_lr()[0],
                   **dict(zip(LOSS_KEYS, means, strict=True)),
                   "samples_per_s": window_micro * o.batch_size * world / max(elapsed, 1e-9)}
            result.history.append(row)
            logger.log_train(row)
            window = {k: 0.0 for k in LOSS_KEYS}
            window_micro, window_start = 0, time.perf_counter()
            logger.advance(step, f"loss {row['total']:.4f} lr {row['lr']:.2e} {row['samples_per_s']:.1f} samples/s")
        else:
            logger.advance(step, "")
        last = step == total_steps
        if (cfg.log.eval_every and step % cfg.log.eval_every == 0) or last:
            run_eval(step)
        if (cfg.log.save_every and step % cfg.log.save_every == 0) or last:
            state = {"step": step, "micro_batch": micro, "epoch": where.epoch, "position_in_epoch": where.position,
                     "total_steps": total_steps, "world_size": world, "config": cfg.to_dict(),
                     "last_eval": result.evals[-1] if result.evals else None}
            _save(accelerator, module, tokenizer, cfg, step, state)
    logger.close()
    accelerator.end_training()
    return result
