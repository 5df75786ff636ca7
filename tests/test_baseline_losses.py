"""The baselines' losses against direct float64 loop computations; float32 under autocast."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from skinssl.lightning_modules.baselines.losses import (
    barlow_twins,
    info_nce,
    negative_cosine,
    normalized_mse,
    prototype_cross_entropy,
    swapped_prediction,
    swav_codes,
)
from skinssl.lightning_modules.baselines.momentum import momentum_at
from skinssl.lightning_modules.losses import global_mean

VALID = torch.tensor([True, False, True, True, True, False])


def rows(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def cos(u: list[float], v: list[float]) -> float:
    dot = sum(a * b for a, b in zip(u, v, strict=True))
    return dot / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def kept(valid: torch.Tensor | None, n: int) -> list[int]:
    return [i for i in range(n) if valid is None or bool(valid[i])]


@pytest.mark.parametrize("valid", [None, VALID])
def test_negative_cosine_and_normalized_mse(valid: torch.Tensor | None) -> None:
    p, z = rows(6, 5), rows(6, 5, seed=1)
    cosines = [cos(p[i].tolist(), z[i].tolist()) for i in kept(valid, 6)]
    expected = -sum(cosines) / len(cosines)
    assert float(negative_cosine(p, z, valid)) == pytest.approx(expected, rel=1e-5)
    assert float(normalized_mse(p, z, valid)) == pytest.approx(2 + 2 * expected, rel=1e-5)


def test_stop_gradient_on_the_target() -> None:
    p, z = rows(4, 3).requires_grad_(True), rows(4, 3, seed=1).requires_grad_(True)
    (negative_cosine(p, z) + normalized_mse(p, z)).backward()
    assert p.grad is not None and z.grad is None


@pytest.mark.parametrize("valid", [None, VALID])
def test_info_nce_matches_loop(valid: torch.Tensor | None) -> None:
    q, k, queue, t = rows(6, 4), rows(6, 4, seed=1), rows(9, 4, seed=2), 0.2
    losses = []
    for i in kept(valid, 6):
        pos = cos(q[i].tolist(), k[i].tolist()) / t
        negs = [cos(q[i].tolist(), row.tolist()) / t for row in queue]
        denom = math.exp(pos) + sum(math.exp(s) for s in negs)
        losses.append(-(pos - math.log(denom)))
    got = float(info_nce(q, k, queue, t, valid))
    assert got == pytest.approx(sum(losses) / len(losses), rel=1e-5)


@pytest.mark.parametrize("valid", [None, VALID])
def test_barlow_twins_matches_loop(valid: torch.Tensor | None) -> None:
    a, b, lam = rows(6, 3), rows(6, 3, seed=1), 0.01
    idx = kept(valid, 6)
    n, d = len(idx), a.shape[1]

    def standardised(x: torch.Tensor, j: int) -> list[float]:
        col = [float(x[i, j]) for i in idx]
        mean = sum(col) / n
        var = sum((v - mean) ** 2 for v in col) / n  # biased, as BatchNorm in training
        return [(v - mean) / math.sqrt(var + 1e-5) for v in col]

    sa = [standardised(a, j) for j in range(d)]
    sb = [standardised(b, j) for j in range(d)]
    expected = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(x * y for x, y in zip(sa[i], sb[j], strict=True)) / n
            expected += (1 - c) ** 2 if i == j else lam * c**2
    assert float(barlow_twins(a, b, lam, valid)) == pytest.approx(expected, rel=1e-4)


def test_barlow_twins_without_two_valid_rows_is_a_zero_with_graph() -> None:
    a = rows(3, 2).requires_grad_(True)
    loss = barlow_twins(a, rows(3, 2, seed=1), valid=torch.tensor([True, False, False]))
    loss.backward()
    assert loss.item() == 0 and a.grad is not None


def reference_sinkhorn(scores: np.ndarray, iterations: int, eps: float) -> np.ndarray:
    """Sinkhorn-Knopp as scaling vectors: Q = diag(u) exp(S^T / eps) diag(v), rows (prototypes)
    summing to 1/K and columns (samples) to 1/N; returned per sample (columns sum to 1)."""
    kernel = np.exp(scores.T.astype(np.float64) / eps)  # [K, N]
    k, n = kernel.shape
    kernel /= kernel.sum()
    u, v = np.ones(k), np.ones(n)
    for _ in range(iterations):
        u = (1 / k) / (kernel @ v)
        v = (1 / n) / (kernel.T @ u)
    q = u[:, None] * kernel * v[None, :]
    return (q * n).T


def test_swav_codes_match_scaling_form_of_sinkhorn() -> None:
    scores = (
        torch.nn.functional.normalize(rows(8, 3), dim=1)
        @ torch.nn.functional.normalize(rows(5, 3, seed=1), dim=1).T
    )
    codes = swav_codes(scores, iterations=3, epsilon=0.05, gather=False)
    expected = reference_sinkhorn(scores.numpy(), 3, 0.05)
    np.testing.assert_allclose(codes.numpy(), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(codes.sum(1).numpy(), np.ones(8), rtol=1e-5)


@pytest.mark.parametrize("valid", [None, VALID])
def test_swapped_prediction_matches_loop(valid: torch.Tensor | None) -> None:
    scores, t = rows(6, 4), 0.1
    codes = torch.softmax(rows(6, 4, seed=1), dim=1)
    losses = []
    for i in kept(valid, 6):
        logits = [float(s) / t for s in scores[i]]
        log_z = math.log(sum(math.exp(x) for x in logits))
        losses.append(-sum(float(q) * (x - log_z) for q, x in zip(codes[i], logits, strict=True)))
    got = float(swapped_prediction(scores, codes, t, valid))
    assert got == pytest.approx(sum(losses) / len(losses), rel=1e-5)


def test_prototype_cross_entropy_skips_unassigned_cases() -> None:
    scores, t = rows(5, 3), 0.1
    targets = torch.tensor([0, 2, -1, 1, -1])
    losses = []
    for i, y in enumerate(targets.tolist()):
        if y < 0:
            continue
        logits = [float(s) / t for s in scores[i]]
        losses.append(math.log(sum(math.exp(x) for x in logits)) - logits[y])
    got = float(prototype_cross_entropy(scores, targets, t))
    assert got == pytest.approx(sum(losses) / len(losses), rel=1e-5)


def test_global_mean_without_weight_is_zero_with_graph() -> None:
    x = rows(3).requires_grad_(True)
    loss = global_mean(x, torch.zeros(3))
    loss.backward()
    assert loss.item() == 0 and x.grad is not None


def test_losses_are_float32_under_autocast() -> None:
    lin = torch.nn.Linear(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b, queue = lin(rows(6, 4)), lin(rows(6, 4, seed=1)), lin(rows(7, 4, seed=2))
        assert a.dtype == torch.bfloat16
        codes = swav_codes(a)
        losses = [
            negative_cosine(a, b, VALID),
            normalized_mse(a, b),
            info_nce(a, b, queue, 0.2, VALID),
            barlow_twins(a, b, valid=VALID),
            swapped_prediction(a, codes, 0.1, VALID),
            prototype_cross_entropy(a, torch.tensor([0, 1, 2, 3, -1, 0])),
        ]
    assert codes.dtype == torch.float32
    for loss in losses:
        assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_momentum_schedule() -> None:
    assert momentum_at(0, 100, 0.99, 1.0) == pytest.approx(0.99)
    assert momentum_at(50, 100, 0.99, 1.0) == pytest.approx(0.995)
    assert momentum_at(100, 100, 0.99, 1.0) == pytest.approx(1.0)
    assert momentum_at(7, 100, 0.9, 0.9) == pytest.approx(0.9)  # constant (MoCo v2)
