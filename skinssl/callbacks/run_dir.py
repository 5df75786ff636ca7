"""Where a run's files go, and its TensorBoard writer."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure

from skinssl.evaluation.figures import save, to_rgb

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


def log_dir(trainer: L.Trainer) -> Path:
    """The run's log directory: the logger's, else the trainer's root.

    As ``trainer.log_dir`` but without its broadcast, so that one rank alone may ask (a
    collective called on rank 0 only would wait for the other ranks forever).
    """
    logger = trainer.logger
    path = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
    return Path(path or trainer.default_root_dir)


def logged_step(trainer: L.Trainer) -> int:
    """The step the trainer's loggers write at: in a fit its step; in validate, test or
    predict with a checkpoint, the checkpoint's (the skinssl CLI sets it with ``log_at``)."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def log_at(trainer: L.Trainer, step: int, epoch: int) -> None:
    """Make an evaluation log at a checkpoint's training step and epoch (Lightning restores
    neither outside a fit, so it would log step 0, epoch 0)."""
    trainer.fit_loop.epoch_loop._batches_that_stepped = step
    trainer.fit_loop.epoch_progress.current.completed = epoch


def tensorboard_loggers(trainer: L.Trainer) -> list[TensorBoardLogger]:
    """The trainer's TensorBoard loggers."""
    return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def tensorboard(trainer: L.Trainer) -> SummaryWriter | None:
    """The run's TensorBoard ``SummaryWriter``, or None without a TensorBoard logger."""
    loggers = tensorboard_loggers(trainer)
    return loggers[0].experiment if loggers else None


def publish(trainer: L.Trainer, fig: Figure, name: str, tag: str) -> Path:
    """Save ``fig`` as ``<run dir>/figures/<name>.png`` and log it to TensorBoard as ``tag``."""
    path = save(fig, log_dir(trainer) / "figures" / f"{name}.png")
    writer = tensorboard(trainer)
    if writer is not None:
        writer.add_image(tag, to_rgb(fig), logged_step(trainer), dataformats="HWC")
        writer.flush()
    return path


def log_image(trainer: L.Trainer, tag: str, image: np.ndarray) -> None:
    """An RGB uint8 image [H, W, 3] to TensorBoard (nothing without a TensorBoard logger)."""
    writer = tensorboard(trainer)
    if writer is not None:
        writer.add_image(tag, image, logged_step(trainer), dataformats="HWC")
        writer.flush()
