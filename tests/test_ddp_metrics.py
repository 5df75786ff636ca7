"""Outputs gathered over two gloo ranks equal the single-process ones, padding duplicates
included, so every number of the report equals the single-device number."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
from helpers import run_gloo

from skinssl.evaluation import CaseOutputs
from skinssl.evaluation.report import build_report
from skinssl.lightning_modules.metrics import HeadOutputs

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="gloo backend unavailable"
)
N = 11  # odd: a distributed sampler pads rank 1 with a repeat of case 0
HEADS = ("DIAG", "PN", "BWV")


def data() -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Probabilities per head, labels [N, 8] (a PN label unknown), attention [N, 3, 3]."""
    gen = torch.Generator().manual_seed(0)
    probs = {
        h: torch.rand(N, k, generator=gen).softmax(1) for h, k in zip(HEADS, (5, 3, 2), strict=True)
    }
    labels = torch.full((N, 8), -1)
    labels[:, :3] = torch.stack([torch.randint(0, k, (N,), generator=gen) for k in (5, 3, 2)], 1)
    labels[3, 1] = -1
    return probs, labels, torch.rand(N, 3, 3, generator=gen).softmax(-1)


def collect(index: torch.Tensor) -> CaseOutputs:
    probs, labels, attention = data()
    store = HeadOutputs(HEADS, attention=True)
    store.update(index, {h: p[index] for h, p in probs.items()}, labels[index], attention[index])
    return store.compute()


def worker(rank: int) -> dict[str, torch.Tensor]:
    """Rank 0 sees cases 0, 2, 4, ...; rank 1 sees 1, 3, ..., then case 0 again (padding)."""
    index = torch.arange(N)[rank::2]
    if rank == 1:
        index = torch.cat([index, torch.tensor([0])])
    out = collect(index)
    arrays = {"index": out.index, "labels": out.labels, "attention": out.attention}
    arrays.update({f"probs/{h}": p for h, p in out.probs.items()})
    return {k: torch.as_tensor(v) for k, v in arrays.items()}  # loadable with weights_only


def outputs(arrays: dict[str, torch.Tensor]) -> CaseOutputs:
    a = {k: v.numpy() for k, v in arrays.items()}
    probs = {h: a[f"probs/{h}"] for h in HEADS}
    return CaseOutputs(a["index"], probs, a["labels"], a["attention"])


def test_two_ranks_equal_one_process(tmp_path) -> None:
    want = collect(torch.arange(N))
    want_report = build_report(want, resamples=20)
    for got in map(outputs, run_gloo(worker, 2, tmp_path)):
        np.testing.assert_array_equal(got.index, np.arange(N))
        np.testing.assert_array_equal(got.labels, want.labels)
        np.testing.assert_allclose(got.attention, want.attention)
        for h in HEADS:
            np.testing.assert_allclose(got.probs[h], want.probs[h])
        report = build_report(got, resamples=20)
        assert report["summary"].keys() == want_report["summary"].keys()
        for name, entry in report["summary"].items():
            assert entry["value"] == pytest.approx(
                want_report["summary"][name]["value"], nan_ok=True
            )
        assert report["heads"]["PN"]["n"] == N - 1
