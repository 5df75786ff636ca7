"""TensorBoard curves that go on from a resumed checkpoint, without steps twice or backwards.

A stopped fit (SIGTERM, Ctrl-C, a crash) has logged steps after its last checkpoint; the resumed
fit logs those steps again. TensorBoard drops the events logged at or after a step when a
restart mark (``SessionLog.START``, what ``SummaryWriter(purge_step=...)`` writes) follows them,
so this callback writes one at the step the resumed fit logs first: when training starts (before
the epoch's start logs anything, e.g. the learning rate) after a checkpoint at an epoch's end; at
the first batch after a checkpoint mid-epoch (whose step Lightning's loop moves on only then). A
new fit writes one at step 0 before it logs anything, which clears the curves of an earlier
attempt that failed before its first checkpoint.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from tensorboard.compat.proto.event_pb2 import Event, SessionLog

from skinssl.callbacks.run_dir import logged_step, tensorboard


def mark_restart(trainer: L.Trainer, step: int) -> None:
    """Write TensorBoard's restart mark at ``step`` (rank 0, with a TensorBoard logger)."""
    writer = tensorboard(trainer)
    if writer is None or not trainer.is_global_zero:
        return
    start = Event(step=step, session_log=SessionLog(status=SessionLog.START))
    writer._get_file_writer().add_event(start)  # as SummaryWriter does for its purge_step


class ContinuedCurves(L.Callback):
    """Restart marks for TensorBoard: at a new fit's start (step 0, before its
    hyper-parameters are logged), and at a resumed fit's first logged step (the first callback,
    before the others log)."""

    def __init__(self) -> None:
        self._pending = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending = trainer.ckpt_path is not None  # (known once the checkpoint is restored)
        if not self._pending:
            mark_restart(trainer, 0)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending and not trainer.fit_loop.epoch_loop.restarted_on_train_batch_end:
            self._pending = False
            mark_restart(trainer, logged_step(trainer))

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._pending:
            self._pending = False
            mark_restart(trainer, logged_step(trainer))
