"""When the preemption callback may stop: agreed across ranks, at a safe batch end only."""

from __future__ import annotations

import signal
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


def test_warns_when_no_batch_end_is_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    """One batch per epoch and rank (e.g. 413 cases over 2 GPUs, batch 256): it is the epoch's
    last, so a signal could never be honoured; said at the start instead of silently."""
    from skinssl.callbacks import preemption

    warned: list[str] = []
    monkeypatch.setattr(preemption, "rank_zero_warn", warned.append)
    monkeypatch.setattr(preemption.signal, "signal", lambda *args: None)
    trainer, _ = fake_trainer(batches=1, val_every=1)
    Preemption().on_train_start(trainer, None)
    assert len(warned) == 1 and "1 batch(es) per epoch and rank" in warned[0]
    trainer, _ = fake_trainer(batches=2, val_every=2)  # the first batch end is safe
    Preemption().on_train_start(trainer, None)
    assert len(warned) == 1


def test_ranks_agree_every_n_batches_across_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Epochs of 3 batches and checks every 4: the check still comes, in the second epoch."""
    callback = Preemption(check_every_n_batches=4)
    trainer, decisions = fake_trainer(world=2, batches=3, val_every=3)
    saved = []
    monkeypatch.setattr("skinssl.callbacks.preemption.checkpoint_dir", lambda t: Path("ckpts"))
    trainer.save_checkpoint = saved.append
    trainer.global_step, trainer.is_global_zero = 0, True
    callback.received = "SIGUSR1"
    for batch_idx in (0, 1, 2):  # epoch 1: no check yet
        callback.on_train_batch_end(trainer, None, None, None, batch_idx)
    assert decisions == [] and not saved
    callback.on_train_batch_end(trainer, None, None, None, 0)  # epoch 2: the 4th batch checks
    assert decisions == [True] and len(saved) == 1  # and it is safe: saved, exit pending
    with pytest.raises(SystemExit, match="stopped by SIGUSR1"):  # after Lightning logged it
        callback.on_train_batch_start(trainer, None, None, 1)


@pytest.mark.parametrize(("name", "requeued"), [("SIGUSR1", True), ("SIGTERM", False)])
def test_sigterm_stops_as_the_requeue_signal_without_the_requeue(
    monkeypatch: pytest.MonkeyPatch, name: str, requeued: bool
) -> None:
    """scancel or the time limit (SIGTERM) gets the checkpoint and exit, but no requeue."""
    from skinssl.callbacks import preemption

    requeues: list[int] = []
    monkeypatch.setattr(preemption, "requeue_slurm_job", lambda: requeues.append(1))
    monkeypatch.setattr(preemption, "checkpoint_dir", lambda t: Path("ckpts"))
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    callback = Preemption()
    trainer, _ = fake_trainer()
    saved: list[Path] = []
    trainer.save_checkpoint = saved.append
    trainer.global_step, trainer.is_global_zero = 3, True
    callback.listen()  # (the stop below puts the handlers back)
    callback._note(getattr(signal, name), None)
    callback.on_train_batch_end(trainer, None, None, None, 0)
    assert saved == [Path("ckpts/last.ckpt")] and requeues == ([1] if requeued else [])
    with pytest.raises(SystemExit, match=f"stopped by {name} at step 3"):
        callback.on_train_batch_start(trainer, None, None, 1)
    assert Preemption(sigterm=False)._signals == [signal.SIGUSR1]
    assert Preemption(signal_name="none")._signals == [signal.SIGTERM]


def test_a_process_forked_during_set_up_ends_on_sigterm() -> None:
    """Set-up may fork (the synthetic generator's pool), and a pool ends its processes with
    SIGTERM, right after forking them when the work is short: a Python handler inherited then
    can lose that signal. So SIGTERM is handled from training's start only; before, the
    default ends the child at once."""
    import multiprocessing

    callback = Preemption()
    before = signal.getsignal(signal.SIGTERM)
    callback.listen()
    try:
        assert signal.getsignal(signal.SIGTERM) == before
        assert signal.getsignal(signal.SIGUSR1) == callback._note
        child = multiprocessing.get_context("fork").Process(target=signal.pause)
        child.start()
        child.terminate()  # at once, as Pool.terminate may
        child.join(timeout=20)
        assert child.exitcode == -signal.SIGTERM
    finally:
        callback._restore()
