"""AdamW with an optional linear warm-up + cosine schedule, shared by every module."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

Schedule = Literal["constant", "cosine"]


def adamw(
    groups: Iterable[dict[str, Any]],
    weight_decay: float,
    schedule: Schedule,
    warmup_steps: int,
    total_steps: int,
    eps: float = 1e-8,
) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer: AdamW and a per-step LR multiplier.

    ``groups`` are parameter groups with their own ``lr``; groups without trainable parameters
    are dropped, and a group with ``"fixed_lr": True`` keeps its rate from the first step (no
    warm-up, no schedule: SimSiam's predictor). ``constant`` keeps the rate (after warm-up), as
    the SM3 authors did. ``eps`` is AdamW's term added to the root of the second moment.
    """
    groups = [dict(g) for g in groups if any(p.requires_grad for p in g["params"])]
    fixed = [bool(g.pop("fixed_lr", False)) for g in groups]
    for g in groups:
        g["params"] = [p for p in g["params"] if p.requires_grad]
    optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay, eps=eps)
    if total_steps <= 0 and schedule != "constant":
        raise ValueError("a cosine schedule needs a finite number of epochs (trainer.max_epochs)")
    # partials, not closures: their settings can be read (and checked on resume), and LambdaLR
    # saves and restores nothing of them (their __dict__ is empty)
    factor = functools.partial(
        lr_factor, schedule=schedule, warmup_steps=warmup_steps, total_steps=max(1, total_steps)
    )
    constant = functools.partial(lr_factor, schedule="constant", warmup_steps=0, total_steps=1)
    factors = [constant if f else factor for f in fixed]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def lr_factor(step: int, *, schedule: Schedule, warmup_steps: int, total_steps: int) -> float:
    """The learning-rate multiplier at ``step``: linear warm-up, then constant or cosine to 0
    at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def schedule_steps(trainer: L.Trainer, warmup_epochs: float) -> tuple[int, int]:
    """(warm-up steps, total steps) of a fit; total is 0 when the run has neither an epoch nor
    a step limit. Warm-up counts whole epochs of steps, whatever ``max_steps`` cuts off.

    Counted from a loader of our own rather than ``trainer.estimated_stepping_batches``: that
    sets up Lightning's training loader before a checkpoint's loader state is restored, so a
    mid-epoch resume would restart the epoch's order.
    """
    epochs = trainer.max_epochs or 0
    batches = len(trainer.datamodule.train_dataloader())
    limit = trainer.limit_train_batches
    batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
    per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
    total = epochs * per_epoch if epochs > 0 else 0
    if trainer.max_steps > 0:
        total = min(total, trainer.max_steps) if total else trainer.max_steps
    return round(warmup_epochs * per_epoch), total


def global_batch_size(trainer: L.Trainer) -> int:
    """Cases per optimizer step: per-device batch x devices x nodes x accumulated batches."""
    per_device = trainer.datamodule.batch_size
    return per_device * trainer.world_size * trainer.accumulate_grad_batches


def configure_adamw(module: L.LightningModule, groups: list[dict[str, Any]]) -> dict[str, Any]:
    """``adamw`` from a module's hyper-parameters ``weight_decay``, ``adam_eps``,
    ``schedule``, ``warmup_epochs`` and ``lr_reference_batch``.

    With ``lr_reference_batch`` set, every group's rate is scaled by the global batch size over
    it (the linear scaling rule), so a recipe keeps its rates on any number of devices.
    """
    hp, trainer = module.hparams, module.trainer
    if hp.lr_reference_batch:
        scale = global_batch_size(trainer) / hp.lr_reference_batch
        rank_zero_info(f"learning rates x {scale:g} (global batch / {hp.lr_reference_batch})")
        groups = [{**g, "lr": g["lr"] * scale} for g in groups]
    steps = schedule_steps(trainer, hp.warmup_epochs)
    return adamw(groups, hp.weight_decay, hp.schedule, *steps, eps=hp.adam_eps)
