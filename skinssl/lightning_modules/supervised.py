"""The supervised multi-label model: two trunks, late fusion, one linear head per schema head."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from skinssl.labels import HEAD_NAMES, NUM_CLASSES, check_heads
from skinssl.lightning_modules.losses import multi_head_cross_entropy
from skinssl.lightning_modules.metrics import MultiHeadMetrics, per_class_rows, scalar_logs
from skinssl.lightning_modules.nets import Arch, PairEncoder
from skinssl.lightning_modules.optim import Schedule, adamw, schedule_steps

Batch = dict[str, Any]


class MultiLabelClassifier(L.LightningModule):
    """Dermoscopic + clinical trunks, concatenated pooled features, a linear head per label.

    Loss: mean of the per-head cross-entropies (unknown labels ignored). Validation logs
    ``val/auc_mean`` (mean of per-head macro AUCs), the number to select checkpoints on.

    Args:
        backbone: torchvision ResNet of each trunk.
        weights: trunk initialisation: None, ``"imagenet"`` or a local state-dict file.
        share_trunk: one trunk for both modalities instead of two.
        heads: heads to predict (default: all 8, diagnosis first).
        lr: learning rate of the heads.
        trunk_lr: learning rate of the trunks (default: ``lr``); 0 freezes them.
        weight_decay: AdamW weight decay.
        schedule: ``constant`` or ``cosine`` (per step, after warm-up).
        warmup_epochs: epochs of linear warm-up.
        dropout: dropout on the fused feature before the heads.
    """

    def __init__(
        self,
        backbone: Arch = "resnet50",
        weights: str | None = None,
        share_trunk: bool = False,
        heads: list[str] | None = None,
        lr: float = 1e-3,
        trunk_lr: float | None = None,
        weight_decay: float = 0.05,
        schedule: Schedule = "constant",
        warmup_epochs: int = 0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.heads = check_heads(heads or list(HEAD_NAMES))
        self.encoder = PairEncoder(backbone, weights, share_trunk)
        self.dropout = nn.Dropout(dropout)
        self.classifiers = nn.ModuleDict(
            {h: nn.Linear(self.encoder.out_dim, NUM_CLASSES[h]) for h in self.heads}
        )
        self.val_metrics = MultiHeadMetrics(self.heads)
        self.test_metrics = MultiHeadMetrics(self.heads)
        self.test_results: dict | None = None
        if trunk_lr == 0:
            self.encoder.requires_grad_(False)

    def forward(self, derm: torch.Tensor, clinic: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per head."""
        fused = self.dropout(self.encoder(derm, clinic))
        return {h: layer(fused) for h, layer in self.classifiers.items()}

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        logits = self(batch["derm"], batch["clinic"])
        loss = multi_head_cross_entropy(logits, batch["labels"], self.heads)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["index"]))
        return loss

    def _update(self, metrics: MultiHeadMetrics, batch: Batch) -> None:
        logits = self(batch["derm"], batch["clinic"])
        probs = {h: v.float().softmax(dim=1) for h, v in logits.items()}
        labels = {h: batch["labels"][:, HEAD_NAMES.index(h)] for h in self.heads}
        metrics.update(probs, labels)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._update(self.val_metrics, batch)

    def on_validation_epoch_end(self) -> None:
        results = self.val_metrics.compute()
        self.val_metrics.reset()
        self.log_dict(scalar_logs(results, "val"), sync_dist=False)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._update(self.test_metrics, batch)

    def on_test_epoch_end(self) -> None:
        results = self.test_metrics.compute()
        self.test_metrics.reset()
        self.log_dict(scalar_logs(results, "test"), sync_dist=False)
        self.test_results = {"per_class": per_class_rows(results), **results}

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        logits = self(batch["derm"], batch["clinic"])
        return {"index": batch["index"], **{h: v.softmax(dim=1) for h, v in logits.items()}}

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        trunk_lr = hp.lr if hp.trunk_lr is None else hp.trunk_lr
        groups = [{"params": list(self.classifiers.parameters()), "lr": hp.lr}]
        if trunk_lr > 0:
            groups.append({"params": list(self.encoder.parameters()), "lr": trunk_lr})
        return adamw(
            groups, hp.weight_decay, hp.schedule, *schedule_steps(self.trainer, hp.warmup_epochs)
        )
