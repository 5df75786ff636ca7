"""The baselines' losses over two gloo CPU ranks against one process with the whole batch.

Barlow Twins (rows gathered before the standardisation), a masked per-case loss whose ranks
hold different numbers of valid cases (negative cosine; every loss built on ``global_mean``
shares this path), the classifiers' cross-entropy over partly unknown targets (a head known
on one rank only), and SwAV's Sinkhorn codes (equipartition over both ranks): each rank must
report the whole-batch value, and DDP-averaged gradients must equal the whole batch's.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from helpers import group_means, run_gloo

from skinssl.lightning_modules.baselines.losses import barlow_twins, negative_cosine, swav_codes
from skinssl.lightning_modules.baselines.moco import shuffled_batchnorm
from skinssl.lightning_modules.losses import mean_known_ce

WORLD, B, D = 2, 4, 6
MASK = torch.tensor([True, False, True, False] + [True] * B)  # 2 valid on rank 0, 4 on rank 1
# two heads' targets (-1 unknown): the first known 2 times on rank 0 and 3 on rank 1, the
# second on rank 1 only
TARGETS = torch.tensor([[0, -1, 2, -1, 1, 3, -1, 5], [-1, -1, -1, -1, 0, 2, 1, -1]]).T
LOSSES = {
    "barlow_twins": lambda a, b, rows, gather: barlow_twins(a, b, 0.01, MASK[rows], gather),
    "negative_cosine": lambda a, b, rows, gather: negative_cosine(a, b, MASK[rows]),
    "known_ce": lambda a, b, rows, gather: mean_known_ce(
        [(a, TARGETS[rows, 0]), (b[:, :3], TARGETS[rows, 1])], 0.5
    )[0],
}

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="gloo backend unavailable"
)


def cosine_scores(x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Scores as SwAV's: cosine similarities (in [-1, 1]) to the prototypes."""
    normalize = torch.nn.functional.normalize
    return normalize(x, dim=1) @ normalize(prototypes, dim=1).T


def make_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(WORLD * B, D, generator=gen), torch.randn(WORLD * B, D, generator=gen)


def loss_and_grads(name: str, rows: slice, gather: bool) -> dict:
    """The loss of ``rows`` of the batch and its gradients."""
    x_a, x_b = make_batch()
    torch.manual_seed(1)
    proj = torch.nn.Linear(D, D)
    loss = LOSSES[name](proj(x_a[rows]), proj(x_b[rows]), rows, gather)
    loss.backward()
    return {"loss": loss.detach(), "weight": proj.weight.grad, "bias": proj.bias.grad}


def worker(rank: int) -> dict:
    x_a, x_b = make_batch()
    rows = slice(rank * B, (rank + 1) * B)
    out = {}
    for name in LOSSES:
        r = loss_and_grads(name, rows, gather=True)
        for k in ("weight", "bias"):  # what DDP does with parameter gradients
            dist.all_reduce(r[k])
            r[k] /= WORLD
        out[name] = r
    out["codes"] = swav_codes(cosine_scores(x_a[rows], x_b[:3]), gather=True)
    torch.manual_seed(rank)  # rank 0's shuffle is every rank's
    draws = [shuffled_batchnorm(group_means, x_a[rows], 2) for _ in range(3)]
    out["shuffled"] = torch.stack(draws)
    return out


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return run_gloo(worker, WORLD, tmp_path_factory.mktemp("ddp_baselines"))


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_and_ddp_gradients_equal_the_whole_batch(ranks: list[dict], name: str) -> None:
    want = loss_and_grads(name, slice(None), gather=False)
    for rank, r in enumerate(ranks):
        assert float(r[name]["loss"]) == pytest.approx(float(want["loss"]), abs=1e-5)
        for k in ("weight", "bias"):
            torch.testing.assert_close(r[name][k], want[k], atol=1e-5, rtol=0, msg=f"{k} {rank}")


def test_sinkhorn_codes_equipartition_over_all_ranks(ranks: list[dict]) -> None:
    x_a, x_b = make_batch()
    want = swav_codes(cosine_scores(x_a, x_b[:3]), gather=False)
    torch.testing.assert_close(torch.cat([r["codes"] for r in ranks]), want, atol=1e-5, rtol=1e-4)


def test_shuffled_batchnorm_groups_draw_from_every_rank(ranks: list[dict]) -> None:
    """MoCo's shuffled BatchNorm over two ranks: each rank gets its own rows back, each
    normalised with one of 2 random groups of B of all 2B rows, both ranks' rows in a group."""
    x_a, _ = make_batch()
    both = torch.cat([r["shuffled"] for r in ranks], dim=1)  # [draw, 2B, 2D]
    mixed = False
    for out in both:
        torch.testing.assert_close(out[:, :D], x_a)
        means = out[:, D:].unique(dim=0)
        assert len(means) == 2
        for mean in means:
            rows = (out[:, D:] == mean).all(1)
            assert int(rows.sum()) == B
            torch.testing.assert_close(x_a[rows].mean(0), mean)
            mixed |= bool(rows[:B].any() and rows[B:].any())
    assert mixed
