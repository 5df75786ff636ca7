"""Stopping cleanly when the job is about to be killed: checkpoint, requeue, exit.

SLURM sends a signal (``#SBATCH --signal=USR1@120``) some time before the limit. The handler
only notes it; at the end of the current training batch every rank agrees, ``last.ckpt`` is
saved where ``fit --resume true`` looks for it, the SLURM job is requeued, and the process
exits. The restarted job (or the same command run again) continues from that batch, with the
same data order and views (see :mod:`skinssl.datamodules.resumable`).

SIGTERM (``scancel``, the time limit, ``docker stop``) is handled the same way during training,
without the requeue. Lightning's own SIGTERM handler is replaced then: it runs a collective
inside the handler, which can hang when every rank gets the signal at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from skinssl.callbacks.run_dir import log_dir


def checkpoint_dir(trainer: L.Trainer) -> Path:
    """The run's checkpoint folder: the ModelCheckpoint's, else ``<run dir>/checkpoints``."""
    callback = trainer.checkpoint_callback
    folder = getattr(callback, "dirpath", None)
    return Path(folder) if folder else log_dir(trainer) / "checkpoints"


def last_checkpoint(trainer: L.Trainer) -> Path:
    """``<checkpoint folder>/last.ckpt``: where a preempted fit saves and ``--resume`` looks."""
    return checkpoint_dir(trainer) / "last.ckpt"


def requeue_slurm_job() -> None:
    """``scontrol requeue`` this SLURM job (array task aware); a warning if it fails."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = (
        f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        if array_job
        else os.environ["SLURM_JOB_ID"]
    )
    try:
        done = subprocess.run(["scontrol", "requeue", job], check=False).returncode
    except FileNotFoundError:
        done = -1
    if done != 0:
        rank_zero_warn(f"preemption: could not requeue SLURM job {job} (scontrol: {done})")


class Preemption(L.Callback):
    """On ``signal`` during ``fit``: at the next safe batch end, save ``checkpoints/last.ckpt``,
    requeue (under SLURM), and exit with a message saying how to continue as the next batch
    starts (Lightning logs the step's metrics after the batch end).

    A safe batch end is one after an optimizer step (no accumulated gradients are lost) that is
    neither the epoch's last batch nor followed by validation (Lightning would skip those hooks
    on the resumed run).

    Args:
        signal_name: the signal to handle with a requeue (``SIGUSR1``, as the SLURM templates
            send; ``none`` turns this off).
        check_every_n_batches: with several processes, how often (in batches, across epochs)
            the ranks agree on whether the signal came (a one-element all-reduce); one process
            checks every batch.
        sigterm: stop at the next safe batch end with a checkpoint on SIGTERM too (no requeue).
    """

    def __init__(
        self, signal_name: str = "SIGUSR1", check_every_n_batches: int = 10, sigterm: bool = True
    ) -> None:
        if signal_name != "none" and not hasattr(signal, signal_name):
            raise ValueError(f"preemption: unknown signal {signal_name!r}; e.g. SIGUSR1, SIGTERM")
        self.signal_name = signal_name
        self.check_every_n_batches = max(1, check_every_n_batches)
        names = [signal_name] if signal_name != "none" else []
        names += ["SIGTERM"] if sigterm and signal_name != "SIGTERM" else []
        self._signals = [getattr(signal, n) for n in names]
        self.received: str | None = None  # the first signal's name
        self._stopping = False
        self._batches = 0
        self._previous: dict[int, Any] = {}
        self._listening = False
        self._pid = os.getpid()
        self._exit: str | int | None = None

    def _note(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid or not self._listening:  # a forked child (a pool process)
            if signum == signal.SIGTERM:  # or after the fit (Lightning restores handlers late)
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        self.received = self.received or signal.Signals(signum).name

    def listen(self) -> None:
        """Note the requeue signal from now on (the CLI calls it before the fit's set-up, so
        that it is honoured at the first safe batch end even when it comes while the data are
        read). SIGTERM only from training's start: a process forked during set-up (a pool's)
        would inherit the handler, and a SIGTERM that reaches it before Python runs handlers
        is lost, so the pool's end would wait for it for ever."""
        self.received, self._stopping, self._batches, self._exit = None, False, 0, None
        self._listening, self._pid = True, os.getpid()
        self._install([s for s in self._signals if s != signal.SIGTERM])

    def _install(self, signals: list[int]) -> None:
        for signum in signals:
            try:
                previous = signal.signal(signum, self._note)
            except ValueError:  # not the main thread: leave signals alone
                return
            if previous != self._note:
                self._previous.setdefault(signum, previous)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Installed again after Lightning's own handlers (its SLURM requeue and SIGTERM
        handlers are replaced); a signal noted since ``listen`` stays noted."""
        if not self._signals:
            return
        batches = trainer.num_training_batches
        if batches != float("inf") and not any(self._safe(trainer, i) for i in range(batches)):
            rank_zero_warn(
                f"preemption: no batch end of an epoch here ({batches} batch(es) per epoch and "
                f"rank) is safe to stop at, so {'/'.join(s.name for s in self._signals)} will "
                "not save a checkpoint; "
                "use a smaller batch_size or fewer devices for several batches per epoch"
            )
        if not self._listening:  # a fit outside the CLI
            self.listen()
        self._install(self._signals)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def _restore(self) -> None:
        self._listening = False
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._note:
                signal.signal(signum, previous)
        self._previous = {}

    def _safe(self, trainer: L.Trainer, batch_idx: int) -> bool:
        """After an optimizer step, not the epoch's last batch, no validation after it."""
        done = batch_idx + 1
        if done % trainer.accumulate_grad_batches or done >= trainer.num_training_batches:
            return False
        every = trainer.val_check_batch
        return not (isinstance(every, int) and every > 0 and done % every == 0)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        if not self._signals:
            return
        self._batches += 1
        if not self._stopping:
            noted = self.received is not None
            if trainer.world_size == 1:
                self._stopping = noted
            elif self._batches % self.check_every_n_batches == 0:  # the same batch on all ranks
                self._stopping = trainer.strategy.reduce_boolean_decision(noted, all=False)
        if not (self._stopping and self._safe(trainer, batch_idx)):
            return
        path = last_checkpoint(trainer)
        trainer.save_checkpoint(path)
        name = self.received or "another process's signal"
        rank_zero_info(f"preemption: {name} received; saved {path}")
        requeue = self.received == self.signal_name and "SLURM_JOB_ID" in os.environ
        if requeue and trainer.is_global_zero:
            requeue_slurm_job()
        self._restore()
        # exit when the next batch starts: Lightning logs this step's metrics after this hook
        self._exit = (
            f"stopped by {name} at step {trainer.global_step}: checkpoint {path}. "
            "Run the same command with --resume true to continue."
            if trainer.is_global_zero
            else 1  # the other ranks exit without printing it again
        )

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._exit is not None:
            raise SystemExit(self._exit)
