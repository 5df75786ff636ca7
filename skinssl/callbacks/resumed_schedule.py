"""A resumed fit trains at this run's learning rates, and says so when they are not the
checkpoint's."""

from __future__ import annotations

import functools
import math
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
from torch.optim.lr_scheduler import LambdaLR

from skinssl.lightning_modules.optim import lr_factor


def lambda_schedulers(trainer: L.Trainer) -> list[LambdaLR]:
    """The fit's per-step multiplier schedulers (as :func:`~skinssl.lightning_modules.optim.adamw`
    makes: a partial of ``lr_factor`` per parameter group, the first group's the schedule's
    course; a ``fixed_lr`` group's is constant)."""
    return [c.scheduler for c in trainer.lr_scheduler_configs if isinstance(c.scheduler, LambdaLR)]


def schedules(trainer: L.Trainer) -> list[dict[str, Any]]:
    """Each scheduler's settings (kind, warm-up and total steps)."""
    return [
        dict(s.lr_lambdas[0].keywords)
        for s in lambda_schedulers(trainer)
        if isinstance(s.lr_lambdas[0], functools.partial)
    ]


def same_course(old: dict[str, Any], new: dict[str, Any], step: int) -> bool:
    """Whether two schedules' multipliers agree from ``step`` to the end of the longer one."""
    end = max(old.get("total_steps", 0), new.get("total_steps", 0))
    return all(
        math.isclose(lr_factor(t, **old), lr_factor(t, **new), rel_tol=1e-9)
        for t in range(step, end + 1)
    )


class ResumedSchedule(L.Callback):
    """A resumed fit trains at this run's base rates (``lr``, ``trunk_lr``, scaled by
    ``lr_reference_batch`` for this run's global batch) along this run's schedule.

    A resume restores the optimizer, whose parameter groups carry the checkpoint's rates, and
    the scheduler's step and base rates. This callback keeps the step and the optimizer's
    moments, but puts back the base rates ``configure_optimizers`` gave (taken at the start of
    the fit, before the restore) and sets each group's rate at the step from this run's
    schedule, so the first resumed step already trains at it. When the base rates, the
    schedule's course from that step on (``max_epochs``, ``max_steps``, ``warmup_epochs``,
    ``schedule``, batches per epoch) or the rate at the step differ from the checkpoint's, it
    warns. Checkpoints keep the schedule's settings for that comparison.
    """

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None
        self._saved: list[dict[str, Any]] | None = None
        self._configured: list[list[float]] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        return {"schedules": schedules(self._trainer)} if self._trainer is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved = state_dict.get("schedules")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._configured = [list(s.base_lrs) for s in lambda_schedulers(trainer)]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        saved, self._saved = self._saved or [], None
        if trainer.ckpt_path is None:
            return
        pairs = zip(lambda_schedulers(trainer), self._configured, strict=True)
        for i, (scheduler, configured) in enumerate(pairs):
            groups = scheduler.optimizer.param_groups
            step, restored, had = scheduler.last_epoch, list(scheduler.base_lrs), groups[0]["lr"]
            scheduler.base_lrs = configured
            for group, base, factor in zip(groups, configured, scheduler.lr_lambdas, strict=True):
                group["initial_lr"], group["lr"] = base, base * factor(step)
            changes = []
            if not all(map(close, restored, configured)):
                changes.append(f"base rates {fmt(restored)} -> {fmt(configured)}")
            now = scheduler.lr_lambdas[0]
            if i < len(saved) and isinstance(now, functools.partial):
                old, new = saved[i], dict(now.keywords)
                if not same_course(old, new, step):
                    changes += [f"{k} {old.get(k)!r} -> {v!r}" for k, v in new.items()
                                if old.get(k) != v]  # fmt: skip
            if changes or not close(had, groups[0]["lr"]):
                rank_zero_warn(
                    f"resumed at step {step} with learning rates unlike the checkpoint's "
                    f"({'; '.join(changes) or 'the rate at this step'}): the checkpoint's run had "
                    f"set {had:.3g}, this run trains at {groups[0]['lr']:.3g} (first parameter "
                    "group) and goes on along its own schedule. Rates follow the config: lr, "
                    "trunk_lr, lr_reference_batch with the global batch, and the schedule with "
                    "max_epochs, max_steps, warmup_epochs, schedule and batches per epoch"
                )


def close(a: float, b: float) -> bool:
    """Equal rates, up to rounding."""
    return math.isclose(a, b, rel_tol=1e-6)


def fmt(rates: list[float]) -> str:
    """Rates as ``[0.001, 0.0001]``."""
    return "[" + ", ".join(f"{r:.3g}" for r in rates) + "]"
