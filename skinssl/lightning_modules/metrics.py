"""Per-class and per-head classification metrics, synced across devices by torchmetrics.

Per class (one-vs-rest): AUC, sensitivity, specificity, precision, support. Per head: accuracy,
balanced accuracy (mean sensitivity over classes present), macro AUC (mean over classes with
both positives and negatives). ``auc_mean``, the mean of the per-head macro AUCs, is the number
checkpoints are selected on (on validation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc
from torchmetrics.utilities import dim_zero_cat

from skinssl.labels import head

NAN = float("nan")


class Predictions(Metric):
    """Every (probabilities, target) pair of an epoch, gathered from all ranks on compute.

    Each pair carries its case ``index``: a distributed sampler pads the last batches with
    repeated cases, and only the first prediction of each case is kept.
    """

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self.add_state("index", default=[], dist_reduce_fx="cat")

    def update(self, probs: torch.Tensor, target: torch.Tensor, index: torch.Tensor) -> None:
        known = target >= 0
        self.probs.append(probs[known].detach().float())
        self.target.append(target[known].detach().long())
        self.index.append(index[known].detach().long())

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        # after a multi-device sync the list states are already concatenated tensors
        if isinstance(self.probs, list) and not self.probs:
            return torch.zeros(0, self.num_classes), torch.zeros(0, dtype=torch.long)
        probs = dim_zero_cat(self.probs).reshape(-1, self.num_classes)
        target = dim_zero_cat(self.target).reshape(-1)
        index = dim_zero_cat(self.index).reshape(-1)
        unique, inverse = torch.unique(index, return_inverse=True)
        first = torch.full((len(unique),), len(index), device=index.device)
        first = first.scatter_reduce(
            0, inverse, torch.arange(len(index), device=index.device), "amin"
        )
        return probs[first], target[first]

    def gathered(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(probs [N, K], target [N]) of all ranks; ``compute`` may squeeze a single case."""
        probs, target = self.compute()
        return probs.reshape(-1, self.num_classes), target.reshape(-1)


def _div(a: float, b: float) -> float:
    return a / b if b > 0 else NAN


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else NAN


def head_results(probs: torch.Tensor, target: torch.Tensor, head_name: str) -> dict:
    """Metrics of one head from probabilities [N, K] and targets [N] (unknowns removed)."""
    classes = head(head_name).classes
    pred = probs.argmax(dim=1) if len(probs) else target
    rows = []
    for c, name in enumerate(classes):
        pos, hit = target == c, pred == c
        tp = int((pos & hit).sum())
        fn = int((pos & ~hit).sum())
        fp = int((~pos & hit).sum())
        tn = int((~pos & ~hit).sum())
        both = 0 < tp + fn < len(target)
        auc = float(binary_auroc(probs[:, c], pos.long())) if both else NAN
        rows.append(
            {
                "head": head_name,
                "class": name,
                "auc": auc,
                "sensitivity": _div(tp, tp + fn),
                "specificity": _div(tn, tn + fp),
                "precision": _div(tp, tp + fp),
                "support": tp + fn,
            }
        )
    n = len(target)
    return {
        "classes": rows,
        "accuracy": _div(int((pred == target).sum()), n),
        "balanced_accuracy": _nanmean([r["sensitivity"] for r in rows]),
        "auc_macro": _nanmean([r["auc"] for r in rows]),
        "n": n,
    }


class MultiHeadMetrics(torch.nn.Module):
    """Collects predictions of several heads over an epoch and computes their metrics."""

    def __init__(self, heads: Sequence[str]) -> None:
        super().__init__()
        self.heads = list(heads)
        self.store = torch.nn.ModuleDict({h: Predictions(head(h).num_classes) for h in self.heads})

    def update(
        self, probs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], index: torch.Tensor
    ) -> None:
        """Probabilities and labels per head, and the cases' ``index`` (duplicates dropped)."""
        for h in self.heads:
            self.store[h].update(probs[h], labels[h], index)

    def compute(self) -> dict:
        """``{"heads": {head: results}, "auc_mean": float, "accuracy_mean": float}``."""
        results = {h: head_results(*self.store[h].gathered(), h) for h in self.heads}
        return {
            "heads": results,
            "auc_mean": _nanmean([r["auc_macro"] for r in results.values()]),
            "accuracy_mean": _nanmean([r["accuracy"] for r in results.values()]),
        }

    def reset(self) -> None:
        for m in self.store.values():
            m.reset()


def scalar_logs(results: dict, prefix: str) -> dict[str, float]:
    """Flat ``{prefix/name: value}`` of the per-head and mean numbers, for the logger."""
    logs = {
        f"{prefix}/auc_mean": results["auc_mean"],
        f"{prefix}/acc_mean": results["accuracy_mean"],
    }
    for h, r in results["heads"].items():
        logs[f"{prefix}/{h}/auc"] = r["auc_macro"]
        logs[f"{prefix}/{h}/acc"] = r["accuracy"]
        logs[f"{prefix}/{h}/bacc"] = r["balanced_accuracy"]
    return logs


def per_class_rows(results: dict) -> list[dict]:
    """One row per class of every head (the per-class table)."""
    return [row for r in results["heads"].values() for row in r["classes"]]
