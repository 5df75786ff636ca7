"""Metrics against scikit-learn on random predictions; the multi-head loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from skinssl.labels import HEAD_NAMES
from skinssl.lightning_modules.losses import multi_head_cross_entropy
from skinssl.lightning_modules.metrics import MultiHeadMetrics


def test_per_class_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    n = 300
    probs = torch.tensor(rng.dirichlet(np.ones(5), size=n), dtype=torch.float32)
    target = torch.tensor(rng.integers(0, 5, size=n))
    target[::7] = -1  # unknown labels are ignored
    metrics = MultiHeadMetrics(["DIAG"])
    for chunk in torch.arange(n).split(64):  # several batches
        metrics.update({"DIAG": probs[chunk]}, {"DIAG": target[chunk]}, chunk)
    # a distributed sampler's padding repeats cases: they are counted once
    metrics.update({"DIAG": probs[:5]}, {"DIAG": target[:5]}, torch.arange(5))
    res = metrics.compute()["heads"]["DIAG"]
    known = target >= 0
    y, p = target[known].numpy(), probs[known].numpy()
    pred = p.argmax(1)
    for c, row in enumerate(res["classes"]):
        pos = (y == c).astype(int)
        hit = (pred == c).astype(int)
        assert row["auc"] == pytest.approx(roc_auc_score(pos, p[:, c]), abs=1e-6)
        assert row["sensitivity"] == pytest.approx(recall_score(pos, hit))
        assert row["specificity"] == pytest.approx(recall_score(1 - pos, 1 - hit))
        assert row["precision"] == pytest.approx(precision_score(pos, hit))
        assert row["support"] == pos.sum()
    assert res["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert res["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    macro = np.mean([roc_auc_score((y == c).astype(int), p[:, c]) for c in range(5)])
    assert res["auc_macro"] == pytest.approx(macro, abs=1e-6)
    assert res["n"] == int(known.sum())


def test_absent_class_gives_nan_and_is_left_out_of_means() -> None:
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    target = torch.tensor([0, 1, 0, 1])  # class 2 never occurs
    metrics = MultiHeadMetrics(["PN"])
    metrics.update({"PN": probs}, {"PN": target}, torch.arange(4))
    out = metrics.compute()
    res = out["heads"]["PN"]
    assert math.isnan(res["classes"][2]["auc"]) and math.isnan(res["classes"][2]["sensitivity"])
    assert res["auc_macro"] == pytest.approx(1.0)
    assert res["balanced_accuracy"] == pytest.approx(1.0)
    assert out["auc_mean"] == pytest.approx(1.0)


def test_multi_head_cross_entropy() -> None:
    torch.manual_seed(0)
    heads = ["DIAG", "BWV"]
    logits = {"DIAG": torch.randn(4, 5), "BWV": torch.randn(4, 2)}
    labels = torch.full((4, 8), -1)
    labels[:, HEAD_NAMES.index("DIAG")] = torch.tensor([0, 2, -1, 4])
    labels[:, HEAD_NAMES.index("BWV")] = torch.tensor([1, 0, 1, 1])
    expected = (
        F.cross_entropy(logits["DIAG"][[0, 1, 3]], torch.tensor([0, 2, 4]))
        + F.cross_entropy(logits["BWV"], labels[:, HEAD_NAMES.index("BWV")])
    ) / 2
    assert multi_head_cross_entropy(logits, labels, heads) == pytest.approx(float(expected))
    # a head with no known label is left out of the mean
    labels[:, HEAD_NAMES.index("BWV")] = -1
    only_diag = F.cross_entropy(logits["DIAG"][[0, 1, 3]], torch.tensor([0, 2, 4]))
    assert multi_head_cross_entropy(logits, labels, heads) == pytest.approx(float(only_diag))
    # nothing known: zero loss that still backpropagates
    w = torch.randn(4, 5, requires_grad=True)
    loss = multi_head_cross_entropy({"DIAG": w}, torch.full((4, 8), -1), ["DIAG"])
    loss.backward()
    assert loss.item() == 0 and w.grad is not None
