"""NT-Xent against a direct float64 computation; alignment/uniformity; the relation module."""

from __future__ import annotations

import math

import pytest
import torch

from skinssl.lightning_modules.losses import alignment, nt_xent, uniformity
from skinssl.lightning_modules.relation import LabelTokens


def reference_nt_xent(a: torch.Tensor, b: torch.Tensor, t: float, valid=None) -> float:
    """Loop over anchors in float64: -log softmax of the positive among all other rows."""
    z = torch.cat([a, b]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n = len(a)
    losses = []
    for i in range(2 * n):
        if valid is not None and not valid[i % n]:
            continue
        pos = (i + n) % (2 * n)
        sims = {j: float(z[i] @ z[j]) / t for j in range(2 * n) if j != i}
        denom = sum(math.exp(s) for s in sims.values())
        losses.append(-(sims[pos] - math.log(denom)))
    return sum(losses) / len(losses)


def test_nt_xent_matches_reference() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(6, 16), torch.randn(6, 16)
    for t in (0.1, 0.5):
        assert float(nt_xent(a, b, t)) == pytest.approx(reference_nt_xent(a, b, t), rel=1e-5)


def test_nt_xent_ignores_invalid_pairs_as_positives() -> None:
    torch.manual_seed(1)
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    valid = torch.tensor([True, False, True, True, False])
    got = float(nt_xent(a, b, 0.2, valid))
    assert got == pytest.approx(reference_nt_xent(a, b, 0.2, valid.tolist()), rel=1e-5)
    # changing an invalid pair's partner only changes the negatives, not a positive term
    assert got != pytest.approx(float(nt_xent(a, b, 0.2)), rel=1e-3)
    # no valid pair: a zero that keeps the graph
    a.requires_grad_(True)
    zero = nt_xent(a, b, 0.2, torch.zeros(5, dtype=torch.bool))
    zero.backward()
    assert zero.item() == 0 and a.grad is not None


def test_nt_xent_under_autocast_is_float32() -> None:
    torch.manual_seed(2)
    a, b = torch.randn(6, 16), torch.randn(6, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lin = torch.nn.Linear(16, 16)
        loss = nt_xent(lin(a), lin(b), 0.1, torch.tensor([True] * 5 + [False]))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_nt_xent_perfect_pairs_low_loss() -> None:
    x = torch.eye(4) * 5
    assert float(nt_xent(x, x, 0.05)) < 1e-3


def test_alignment_and_uniformity() -> None:
    x = torch.randn(32, 8)
    assert float(alignment(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(alignment(x, -x)) == pytest.approx(4.0, abs=1e-5)
    same = torch.ones(10, 8)
    assert float(uniformity(same)) == pytest.approx(0.0, abs=1e-6)
    assert float(uniformity(torch.randn(64, 8))) < -1.0


def test_relation_attention_rows_sum_to_one() -> None:
    torch.manual_seed(0)
    block = LabelTokens(in_dim=20, heads=["PN", "BWV", "VS"], dim=16, ffn=8, layers=2, nhead=2)
    block.eval()  # in training, attention dropout acts on the weights as in TransformerEncoderLayer
    tokens, maps = block.forward_with_attention(torch.randn(4, 20))
    assert tokens.shape == (4, 3, 16)
    assert len(maps) == 2 and maps[0].shape == (4, 3, 3)
    for m in maps:
        torch.testing.assert_close(m.sum(-1), torch.ones(4, 3))
        assert (m >= 0).all()
    ablation = LabelTokens(in_dim=20, heads=["PN", "BWV"], dim=16, relation="none")
    out, none_maps = ablation.forward_with_attention(torch.randn(4, 20))
    assert out.shape == (4, 2, 16) and none_maps == []


def test_weighted_alignment_and_uniformity_equal_the_selected_rows() -> None:
    a, b = torch.randn(10, 8), torch.randn(10, 8)
    keep = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1, 0, 1], dtype=torch.bool)
    torch.testing.assert_close(alignment(a, b, keep), alignment(a[keep], b[keep]))
    both, kept = torch.cat([a, b]), keep.repeat(2)
    torch.testing.assert_close(
        uniformity(both, weight=kept), uniformity(both[kept]), atol=1e-5, rtol=1e-5
    )
