"""Momentum (EMA) copies of the trunks and projectors, shared by BYOL and MoCo.

The copies are updated after every optimiser step with lightly's ``update_momentum``; the rate
follows ``momentum_at`` (BYOL's cosine increase from ``momentum`` to ``momentum_end``; equal
values keep it constant, as MoCo v2). The saved ``encoder.*`` is the online (query) trunk; the
copies are saved as ``momentum_encoder.*`` / ``momentum_projectors.*`` for resuming only.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from lightly.models.utils import update_momentum
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from skinssl.lightning_modules.baselines.base import Pretraining
from skinssl.lightning_modules.optim import schedule_steps


def momentum_at(step: int, total: int, start: float, end: float) -> float:
    """Cosine schedule from ``start`` (step 0) to ``end`` (step ``total``), as in BYOL."""
    progress = min(1.0, step / total) if total > 0 else 1.0
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` that no optimiser trains (shared submodules stay shared)."""
    twin = copy.deepcopy(module)
    twin.requires_grad_(False)
    return twin


class MomentumPretraining(Pretraining):
    """A :class:`Pretraining` whose subclass sets ``self.projectors`` (a ModuleDict by
    modality) and then calls :meth:`init_momentum`. Needs ``momentum`` and ``momentum_end``
    hyper-parameters."""

    projectors: nn.ModuleDict

    def init_momentum(self) -> None:
        if not 0 <= self.hparams.momentum <= self.hparams.momentum_end <= 1:
            raise ValueError(
                f"need 0 <= momentum ({self.hparams.momentum}) <= momentum_end "
                f"({self.hparams.momentum_end}) <= 1"
            )
        self.momentum_encoder = frozen_copy(self.encoder)
        self.momentum_projectors = frozen_copy(self.projectors)

    def momentum_embedder(self, modality: str) -> Callable[[Tensor], Tensor]:
        """The modality's momentum trunk, then its momentum projector."""
        trunk = getattr(self.momentum_encoder, modality)
        projector = self.momentum_projectors[modality]
        return lambda views: projector(trunk(views))

    @torch.no_grad()
    def momentum_embed(self, modality: str, views: Tensor) -> Tensor:
        """The momentum trunk and projector's output for both views stacked [2N, ...]."""
        return self.each_view(self.momentum_embedder(modality), views)

    def on_train_start(self) -> None:
        """The fit's optimiser steps, counted once for the momentum schedule (as the learning
        rate schedule counts them); a warning when a resumed fit changes the schedule's course
        (e.g. more epochs: the momentum at the step drops back)."""
        self._momentum_total = schedule_steps(self.trainer, 0)[1]
        saved, hp = getattr(self, "_saved_momentum_total", None), self.hparams
        if self._momentum_total == 0 and hp.momentum != hp.momentum_end:
            raise ValueError(
                f"the momentum schedule from momentum {hp.momentum} to momentum_end "
                f"{hp.momentum_end} needs a run of known length: set trainer.max_epochs or "
                f"trainer.max_steps, or momentum_end equal to momentum"
            )
        if saved in (None, self._momentum_total) or hp.momentum == hp.momentum_end:
            return
        step = self.trainer.global_step
        was, now = (momentum_at(step, t, hp.momentum, hp.momentum_end)
                    for t in (saved, self._momentum_total))  # fmt: skip
        rank_zero_warn(
            f"resumed at step {step}: the momentum schedule now ends at step "
            f"{self._momentum_total}, the checkpoint's at {saved}, so the momentum goes on "
            f"from {now:.6f} (the checkpoint's course: {was:.6f})"
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The momentum schedule's length, to compare on a resume."""
        checkpoint["momentum_total_steps"] = getattr(self, "_momentum_total", None)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The saved schedule's length, for ``on_train_start`` to compare."""
        self._saved_momentum_total = checkpoint.get("momentum_total_steps")

    def current_momentum(self) -> float:
        hp = self.hparams
        step = self.trainer.global_step
        return momentum_at(step, self._momentum_total, hp.momentum, hp.momentum_end)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        self.log("train/momentum", self.current_momentum(), batch_size=len(batch["index"]))
        return super().training_step(batch, batch_idx)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimiser step, then the EMA update of the momentum copies."""
        super().optimizer_step(*args, **kwargs)
        m = self.current_momentum()
        update_momentum(self.encoder, self.momentum_encoder, m)
        update_momentum(self.projectors, self.momentum_projectors, m)
