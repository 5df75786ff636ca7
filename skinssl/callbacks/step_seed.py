"""Randomness inside the training step (dropout) drawn from the step, not from history.

Lightning does not save the global random generators in checkpoints, and the resumed run draws
from them in other places (loader iterators, the sanity check) before its first step, so dropout
masks after a resume would differ from the uninterrupted run's. Reseeding torch's generators (CPU
and every CUDA device) before each training batch from (run seed, epoch, batch, rank) makes them
a function of where the run is, as the views are (:func:`skinssl.datamodules.dataset.views_seed`).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch

from skinssl.datamodules.dataset import shared_seed


def step_seed(seed: int, epoch: int, batch_idx: int, rank: int) -> int:
    """A well-mixed 63-bit seed for one training batch of one rank."""
    state = np.random.SeedSequence([seed, epoch, batch_idx, rank]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


class StepSeed(L.Callback):
    """Before every training batch, ``torch.manual_seed(step_seed(run seed, epoch, batch, rank))``.

    The run seed is rank 0's ``torch.initial_seed()`` when ``fit`` sets up (``seed_everything``).
    Micro-batches of one accumulated step get different seeds (they are different batches).
    After the fit, torch is seeded with the process's seed from before it, so that a later run
    in the process (e.g. a second ``fit`` in a notebook) finds that seed, not a step's.
    """

    def __init__(self) -> None:
        self._seed: int | None = None
        self._before: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._before = torch.initial_seed()
            self._seed = shared_seed(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._restore()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore()  # (a fit that raises, Ctrl-C included, gets no teardown)

    def _restore(self) -> None:
        if self._before is not None:
            torch.manual_seed(self._before)
            self._before = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        assert self._seed is not None
        torch.manual_seed(
            step_seed(self._seed, trainer.current_epoch, batch_idx, trainer.global_rank)
        )
