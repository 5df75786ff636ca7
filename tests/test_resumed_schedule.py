"""A resumed fit whose learning-rate schedule is not its checkpoint's says so."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from skinssl.callbacks import ResumedSchedule
from skinssl.lightning_modules.optim import adamw, lr_factor


class Tiny(L.LightningModule):
    """A linear layer under AdamW with a schedule over the fit's max_epochs (4 steps each);
    records the rate each optimizer step trains at."""

    def __init__(self, schedule: str = "cosine", warmup_steps: int = 1, lr: float = 0.1) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.schedule, self.warmup_steps, self.lr = schedule, warmup_steps, lr
        self.rates: list[float] = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.rates.append(self.optimizers().param_groups[0]["lr"])
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> dict:
        groups = [{"params": list(self.parameters()), "lr": self.lr}]
        total = self.trainer.max_epochs * 4
        return adamw(groups, 0.0, self.schedule, self.warmup_steps, total_steps=total)


def fit(
    root: Path, max_epochs: int, ckpt_path: Path | None = None, **settings: object
) -> tuple[list[str], list[float]]:
    """Fit ``Tiny`` (checkpoints after every epoch); the schedule warnings it gave and the rate
    of each step it trained."""
    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)
    saves = ModelCheckpoint(dirpath=root, filename="{epoch}", save_top_k=-1)
    trainer = L.Trainer(
        max_epochs=max_epochs, callbacks=[ResumedSchedule(), saves], logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
    )  # fmt: skip
    model = Tiny(**settings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, data, ckpt_path=ckpt_path)
    return [
        str(w.message) for w in caught if "learning rates unlike" in str(w.message)
    ], model.rates


def test_resuming_with_another_max_epochs_trains_along_the_new_schedule(tmp_path: Path) -> None:
    warned, rates = fit(tmp_path, max_epochs=3)
    assert warned == [] and len(rates) == 12
    after_one = tmp_path / "epoch=0.ckpt"
    warned, same = fit(tmp_path / "same", max_epochs=3, ckpt_path=after_one)
    assert warned == [] and same == rates[4:]  # the uninterrupted run's rates
    warned, longer = fit(tmp_path / "longer", max_epochs=6, ckpt_path=after_one)
    # step 4 of 12 (warm-up 1): 0.1 x 0.5 (1 + cos(pi 3/11)); of 24: 0.1 x 0.5 (1 + cos(pi 3/23))
    assert warned == [
        "resumed at step 4 with learning rates unlike the checkpoint's (total_steps 12 -> 24): "
        "the checkpoint's run had set 0.0827, this run trains at 0.0959 (first parameter group) "
        "and goes on along its own schedule. Rates follow the config: lr, trunk_lr, "
        "lr_reference_batch with the global batch, and the schedule with max_epochs, max_steps, "
        "warmup_epochs, schedule and batches per epoch"
    ]
    expected = [0.1 * lr_factor(t, schedule="cosine", warmup_steps=1, total_steps=24)
                for t in range(4, 24)]  # fmt: skip
    assert longer == pytest.approx(expected)  # from the first resumed step on


def test_changes_during_warm_up_and_of_the_base_rate_warn_too(tmp_path: Path) -> None:
    """At step 4 of an 8-step warm-up the rate is the same whatever follows it."""
    assert fit(tmp_path, max_epochs=3, warmup_steps=8)[0] == []
    after_one = tmp_path / "epoch=0.ckpt"
    for kind, epochs, change in (("constant", 3, "schedule 'cosine' -> 'constant'"),
                                 ("cosine", 30, "total_steps 12 -> 120")):  # fmt: skip
        warned, _ = fit(tmp_path / kind, epochs, after_one, schedule=kind, warmup_steps=8)
        assert len(warned) == 1 and f"checkpoint's ({change}): the checkpoint's" in warned[0]
        assert "had set 0.0625, this run trains at 0.0625" in warned[0]  # 0.1 x 5/8
    warned, rates = fit(tmp_path / "lr", 3, after_one, warmup_steps=8, lr=0.2)
    assert len(warned) == 1 and "(base rates [0.1] -> [0.2]): " in warned[0]
    assert rates[0] == pytest.approx(0.2 * 5 / 8)


def test_a_constant_rate_with_more_epochs_is_the_same_course(tmp_path: Path) -> None:
    fit(tmp_path, max_epochs=2, schedule="constant")
    warned, rates = fit(tmp_path / "on", 4, tmp_path / "epoch=0.ckpt", schedule="constant")
    assert warned == [] and rates == [0.1] * 12
