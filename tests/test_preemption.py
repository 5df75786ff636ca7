"""When the preemption callback may stop: agreed across ranks, at a safe batch end only."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from skinssl.callbacks import Preemption


def fake_trainer(world: int = 1, accumulate: int = 1, batches: int = 6, val_every: int = 6):
    decisions: list[bool] = []

    def reduce_boolean_decision(flag: bool, all: bool = True) -> bool:  # noqa: A002
        decisions.append(flag)
        return flag

    strategy = SimpleNamespace(reduce_boolean_decision=reduce_boolean_decision)
    trainer = SimpleNamespace(
        world_size=world, accumulate_grad_batches=accumulate, num_training_batches=batches,
        val_check_batch=val_every, strategy=strategy,
    )  # fmt: skip
    return trainer, decisions


def test_safe_batch_ends_skip_accumulation_last_batch_and_validation() -> None:
    callback = Preemption()
    trainer, _ = fake_trainer(accumulate=2, batches=8, val_every=4)
    safe = [callback._safe(trainer, i) for i in range(8)]
    # steps after batches 2, 4, 6, 8; validation after 4 and 8; 8 is the epoch's last batch
    assert safe == [False, True, False, False, False, True, False, False]


def test_ranks_agree_every_n_batches_across_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Epochs of 3 batches and checks every 4: the check still comes, in the second epoch."""
    callback = Preemption(check_every_n_batches=4)
    trainer, decisions = fake_trainer(world=2, batches=3, val_every=3)
    saved = []
    monkeypatch.setattr("skinssl.callbacks.preemption.checkpoint_dir", lambda t: Path("ckpts"))
    trainer.save_checkpoint = saved.append
    trainer.global_step, trainer.is_global_zero = 0, True
    callback.received = True
    for batch_idx in (0, 1, 2):  # epoch 1: no check yet
        callback.on_train_batch_end(trainer, None, None, None, batch_idx)
    assert decisions == [] and not saved
    with pytest.raises(SystemExit, match="stopped by SIGUSR1"):
        for batch_idx in (0, 1, 2):  # epoch 2: the 4th batch checks, and it is safe
            callback.on_train_batch_end(trainer, None, None, None, batch_idx)
    assert decisions == [True] and len(saved) == 1
