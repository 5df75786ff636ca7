"""A warning when a resumed fit's learning-rate schedule is not the one its checkpoint followed."""

from __future__ import annotations

import math

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
from torch.optim.lr_scheduler import LambdaLR


class ResumedSchedule(L.Callback):
    """At the start of a resumed fit, compare each per-step multiplier schedule (``LambdaLR``,
    as :func:`skinssl.lightning_modules.optim.adamw` makes) with the checkpoint's.

    A resume restores the scheduler's step and base rates, but the schedule itself is rebuilt
    from this run's settings. Another ``max_epochs``, ``max_steps``, ``warmup_epochs``,
    ``schedule``, batch size, device count or ``limit_train_batches`` reshapes it, and the rate
    jumps at the first step. This says so, with the checkpoint's rate and this run's.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is None:
            return
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if not isinstance(scheduler, LambdaLR):
                continue
            step = scheduler.last_epoch
            saved = scheduler.get_last_lr()  # restored: the rate the checkpoint's run had set
            pairs = zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
            rebuilt = [base * factor(step) for base, factor in pairs]
            if all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(saved, rebuilt, strict=True)):
                continue
            rank_zero_warn(
                f"resumed at step {step} of a learning-rate schedule unlike the checkpoint's: it "
                f"had set {saved[0]:.3g}, this run's schedule gives {rebuilt[0]:.3g} (first "
                "parameter group), and the run goes on along this run's schedule. The schedule "
                "follows max_epochs, max_steps, warmup_epochs, schedule, the batch size, the "
                "devices and limit_train_batches: resume with the checkpoint's to continue it "
                "unchanged"
            )
