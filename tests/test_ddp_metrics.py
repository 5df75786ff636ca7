"""Metrics over two gloo ranks equal the single-process metrics, padding duplicates included."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
from helpers import run_gloo

from skinssl.lightning_modules.metrics import MultiHeadMetrics

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="gloo backend unavailable"
)
N = 11  # odd: a distributed sampler pads rank 1 with a repeat of case 0


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilities [N, 3], targets (PN; some unknown) and BWV targets (all unknown)."""
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(N, 3, generator=gen).softmax(1)
    target = torch.randint(0, 3, (N,), generator=gen)
    target[3] = -1
    return probs, target, torch.full((N,), -1)


def evaluate(probs, target, unknown, index) -> dict:
    metrics = MultiHeadMetrics(["PN", "BWV"])
    bwv = torch.full((len(index), 2), 0.5)
    metrics.update({"PN": probs, "BWV": bwv}, {"PN": target, "BWV": unknown}, index)
    return metrics.compute()


def worker(rank: int) -> dict:
    """Rank 0 sees cases 0, 2, 4, ...; rank 1 sees 1, 3, ..., then case 0 again (padding)."""
    probs, target, unknown = data()
    index = torch.arange(N)[rank::2]
    if rank == 1:
        index = torch.cat([index, torch.tensor([0])])
    return evaluate(probs[index], target[index], unknown[index], index)


def test_two_ranks_equal_one_process(tmp_path) -> None:
    probs, target, unknown = data()
    want = evaluate(probs, target, unknown, torch.arange(N))
    for got in run_gloo(worker, 2, tmp_path):
        assert got["auc_mean"] == pytest.approx(want["auc_mean"])
        pn, want_pn = got["heads"]["PN"], want["heads"]["PN"]
        assert pn["n"] == want_pn["n"] == N - 1
        for row, want_row in zip(pn["classes"], want_pn["classes"], strict=True):
            for key in ("auc", "sensitivity", "specificity", "precision", "support"):
                assert row[key] == pytest.approx(want_row[key], nan_ok=True)
        assert got["heads"]["BWV"]["n"] == 0 and math.isnan(got["heads"]["BWV"]["auc_macro"])
