"""A resumed fit whose learning-rate schedule is not its checkpoint's says so."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from skinssl.callbacks import ResumedSchedule
from skinssl.lightning_modules.optim import adamw


class Tiny(L.LightningModule):
    """A linear layer under AdamW with a schedule over the fit's max_epochs (4 steps each)."""

    def __init__(self, schedule: str = "cosine", warmup_steps: int = 1) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.schedule, self.warmup_steps = schedule, warmup_steps

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> dict:
        groups = [{"params": list(self.parameters()), "lr": 0.1}]
        total = self.trainer.max_epochs * 4
        return adamw(groups, 0.0, self.schedule, self.warmup_steps, total_steps=total)


def fit(
    root: Path, max_epochs: int, ckpt_path: Path | None = None, **schedule: object
) -> list[str]:
    """Fit ``Tiny`` (checkpoints after every epoch); the schedule warnings it gave."""
    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)
    saves = ModelCheckpoint(dirpath=root, filename="{epoch}", save_top_k=-1)
    trainer = L.Trainer(
        max_epochs=max_epochs, callbacks=[ResumedSchedule(), saves], logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Tiny(**schedule), data, ckpt_path=ckpt_path)
    return [str(w.message) for w in caught if "learning-rate schedule" in str(w.message)]


def test_resuming_with_another_max_epochs_warns(tmp_path: Path) -> None:
    assert fit(tmp_path, max_epochs=3) == []
    after_one = tmp_path / "epoch=0.ckpt"
    assert fit(tmp_path / "same", max_epochs=3, ckpt_path=after_one) == []
    longer = fit(tmp_path / "longer", max_epochs=6, ckpt_path=after_one)
    # step 4 of 12 (warm-up 1): 0.1 x 0.5 (1 + cos(pi 3/11)); of 24: 0.1 x 0.5 (1 + cos(pi 3/23))
    assert longer == [
        "resumed with a learning-rate schedule unlike the checkpoint's (total_steps 12 -> 24): at "
        "step 4 the checkpoint's run had set 0.0827, this run's schedule gives 0.0959 (first "
        "parameter group), and the run goes on along this run's schedule. It follows "
        "max_epochs, max_steps, warmup_epochs, schedule, the batch size, the devices and "
        "limit_train_batches: resume with the checkpoint's to continue it unchanged"
    ]


def test_changes_during_warm_up_warn_too(tmp_path: Path) -> None:
    """At step 4 of an 8-step warm-up the rate is the same whatever follows it."""
    assert fit(tmp_path, max_epochs=3, warmup_steps=8) == []
    after_one = tmp_path / "epoch=0.ckpt"
    for kind, epochs, change in (("constant", 3, "schedule 'cosine' -> 'constant'"),
                                 ("cosine", 30, "total_steps 12 -> 120")):  # fmt: skip
        warned = fit(tmp_path / kind, epochs, after_one, schedule=kind, warmup_steps=8)
        assert len(warned) == 1 and f"checkpoint's ({change}): at step 4" in warned[0]
        assert "had set 0.0625, this run's schedule gives 0.0625" in warned[0]  # 0.1 x 5/8
