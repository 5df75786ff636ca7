"""Per-case outputs of an evaluation epoch, gathered across devices by torchmetrics.

A distributed sampler pads the last batches with repeated cases; every value carries its case
``index`` and only the first of each case is kept, so the numbers equal a single-device run's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from skinssl.evaluation import CaseOutputs
from skinssl.evaluation.classification import class_auc_summary, evaluate_heads, nanmean
from skinssl.labels import HEAD_NAMES, NUM_CLASSES


class CaseStore(Metric):
    """Named per-case tensors of an epoch (each [B, ...]), gathered from all ranks on compute."""

    full_state_update = False

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.names = tuple(names)
        for name in ("index", *self.names):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, index: torch.Tensor, **values: torch.Tensor) -> None:
        """Store ``values`` (the names given at construction) of the cases ``index``."""
        self.index.append(index.detach().long().reshape(-1))
        for name in self.names:
            getattr(self, name).append(values[name].detach().flatten(1))

    def compute(self) -> dict[str, torch.Tensor]:
        """``{"index": [N], name: [N, ...]}``: one row per case, by ascending index."""
        # after a multi-device sync the list states are already concatenated tensors
        if isinstance(self.index, list) and not self.index:
            return {}
        index = dim_zero_cat(self.index).reshape(-1)
        unique, inverse = torch.unique(index, return_inverse=True)
        first = torch.full((len(unique),), len(index), device=index.device)
        first = first.scatter_reduce(
            0, inverse, torch.arange(len(index), device=index.device), "amin"
        )
        out = {"index": unique}
        for name in self.names:
            out[name] = dim_zero_cat(getattr(self, name)).reshape(len(index), -1)[first]
        return out


class HeadOutputs(torch.nn.Module):
    """Collects probabilities per head, labels and (optionally) attention maps over an epoch."""

    def __init__(self, heads: Sequence[str], attention: bool = False) -> None:
        super().__init__()
        self.heads = tuple(heads)
        self.attention = attention
        self.store = CaseStore(("probs", "labels") + (("attention",) if attention else ()))

    def update(
        self,
        index: torch.Tensor,
        probs: dict[str, torch.Tensor],
        labels: torch.Tensor,
        attention: torch.Tensor | None = None,
    ) -> None:
        """Probabilities [B, K] per head, labels [B, 8], attention [B, L, L] of cases ``index``."""
        values = {"probs": torch.cat([probs[h].float() for h in self.heads], 1), "labels": labels}
        if self.attention:
            values["attention"] = attention.float()
        self.store.update(index, **values)

    def compute(self) -> CaseOutputs:
        """The epoch's outputs (all ranks), as numpy."""
        out = {k: v.cpu().numpy() for k, v in self.store.compute().items()}
        n, sizes = len(out.get("index", ())), [NUM_CLASSES[h] for h in self.heads]
        if not n:
            out = {"index": np.zeros(0, np.int64), "probs": np.zeros((0, sum(sizes))),
                   "labels": np.zeros((0, len(HEAD_NAMES)), np.int64)}  # fmt: skip
        parts = np.split(out["probs"], np.cumsum(sizes)[:-1], axis=1)
        attention = out.get("attention")
        if attention is not None:
            attention = attention.reshape(n, len(self.heads), len(self.heads))
        return CaseOutputs(
            out["index"], dict(zip(self.heads, parts, strict=True)), out["labels"], attention
        )

    def reset(self) -> None:
        self.store.reset()


def scalar_logs(outputs: CaseOutputs, prefix: str) -> dict[str, float]:
    """Flat ``{prefix/name: value}`` of per-head and mean numbers, for the logger.

    Checkpoints are selected on ``auc_mean``, the mean of the per-head macro AUCs, or on
    ``auc_key_classes``, the mean AUC of each head's key class (the authors' ``AUC_AVG``).
    """
    heads = evaluate_heads(outputs)
    logs = {
        f"{prefix}/auc_mean": nanmean(r["auc_macro"] for r in heads.values()),
        f"{prefix}/auc_key_classes": class_auc_summary(heads)["auc_key_classes"],
        f"{prefix}/acc_mean": nanmean(r["accuracy"] for r in heads.values()),
    }
    for h, r in heads.items():
        logs[f"{prefix}/{h}/auc"] = r["auc_macro"]
        logs[f"{prefix}/{h}/acc"] = r["accuracy"]
        logs[f"{prefix}/{h}/bacc"] = r["balanced_accuracy"]
    return logs
