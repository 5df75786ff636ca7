"""A warning when a resumed fit's learning-rate schedule is not the one its checkpoint followed."""

from __future__ import annotations

import functools
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
from torch.optim.lr_scheduler import LambdaLR


def schedules(trainer: L.Trainer) -> list[dict[str, Any]]:
    """The settings of each per-step schedule of the fit (``LambdaLR`` of partials, as
    :func:`skinssl.lightning_modules.optim.adamw` makes), one per parameter group."""
    return [
        dict(factor.keywords)
        for config in trainer.lr_scheduler_configs
        if isinstance(config.scheduler, LambdaLR)
        for factor in config.scheduler.lr_lambdas
        if isinstance(factor, functools.partial)
    ]


class ResumedSchedule(L.Callback):
    """Checkpoints keep the fit's schedule settings (kind, warm-up and total steps); at the start
    of a resumed fit this warns when the rebuilt schedule is another one.

    A resume restores the scheduler's step and base rates, but the schedule itself is rebuilt
    from this run's settings: another ``max_epochs``, ``max_steps``, ``warmup_epochs``,
    ``schedule``, batch size, device count or ``limit_train_batches`` reshapes it, and the run
    goes on along the new one. The warning names what changed and both rates at the step.
    """

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None
        self._saved: list[dict[str, Any]] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        return {"schedules": schedules(self._trainer)} if self._trainer is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved = state_dict.get("schedules")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        saved, self._saved = self._saved, None
        now = schedules(trainer)
        if trainer.ckpt_path is None or not saved or not now or now[0] == saved[0]:
            return  # (one schedule for all parameter groups: adamw's)
        old, new = saved[0], now[0]
        changed = [f"{k} {old.get(k)!r} -> {new[k]!r}" for k in new if old.get(k) != new[k]]
        scheduler = next(c.scheduler for c in trainer.lr_scheduler_configs
                         if isinstance(c.scheduler, LambdaLR))  # fmt: skip
        step, rate = scheduler.last_epoch, scheduler.get_last_lr()[0]
        rebuilt = scheduler.base_lrs[0] * scheduler.lr_lambdas[0](step)
        rank_zero_warn(
            f"resumed with a learning-rate schedule unlike the checkpoint's ({', '.join(changed)})"
            f": at step {step} the checkpoint's run had set {rate:.3g}, this run's schedule gives "
            f"{rebuilt:.3g} (first parameter group), and the run goes on along this run's "
            "schedule. It follows max_epochs, max_steps, warmup_epochs, schedule, the batch size, "
            "the devices and limit_train_batches: resume with the checkpoint's to continue it "
            "unchanged"
        )
