"""NT-Xent with gathered negatives over two gloo CPU ranks against one process with the batch.

Each rank holds B of the 2B pairs. The gathered loss should equal the single-process loss on
every rank, and after DDP's gradient averaging the gradients should equal the single-process
ones, with and without a ``valid`` mask that differs between the ranks' shards.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from helpers import run_gloo

from skinssl.lightning_modules.losses import nt_xent

WORLD = 2
B, D, T = 4, 8, 0.1
# rank 0's shard has one invalid pair (global row 1), rank 1's shard none
MASK = torch.tensor([True, False, True, True] + [True] * B)
CASES = ("plain", "masked")

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="gloo backend unavailable"
)


def make_batch() -> tuple[torch.Tensor, torch.Tensor, torch.nn.Linear]:
    """The full 2B-pair inputs and a tiny projection, identical in every process."""
    gen = torch.Generator().manual_seed(0)
    x_a = torch.randn(WORLD * B, D, generator=gen)
    x_b = torch.randn(WORLD * B, D, generator=gen)
    torch.manual_seed(1)
    return x_a, x_b, torch.nn.Linear(D, D)


def loss_and_grads(
    x_a: torch.Tensor, x_b: torch.Tensor, valid: torch.Tensor | None, gather: bool
) -> dict[str, torch.Tensor]:
    """Loss of ``nt_xent`` through a fresh projection, with weight and input-row gradients."""
    _, _, proj = make_batch()
    x_a, x_b = x_a.clone().requires_grad_(True), x_b.clone().requires_grad_(True)
    loss = nt_xent(proj(x_a), proj(x_b), T, valid, gather=gather)
    loss.backward()
    return {
        "loss": loss.detach(),
        "weight": proj.weight.grad,
        "bias": proj.bias.grad,
        "x_a": x_a.grad,
        "x_b": x_b.grad,
    }


def worker(rank: int) -> dict[str, dict[str, torch.Tensor]]:
    """One rank: gathered loss and gradients of its shard, DDP-averaged."""
    x_a, x_b, _ = make_batch()
    rows = slice(rank * B, (rank + 1) * B)
    results = {}
    for case in CASES:
        valid = MASK[rows] if case == "masked" else None
        r = loss_and_grads(x_a[rows], x_b[rows], valid, gather=True)
        # DDP all-reduces parameter gradients and divides by the world size.
        for k in ("weight", "bias"):
            dist.all_reduce(r[k])
            r[k] /= WORLD
        # The input rows are never averaged by DDP, but their gradient here is already
        # d(sum_q L_q)/dx_r: the all_gather backward sums every rank's loss's gradient into
        # the owner. DDP optimises the mean over ranks, so the single-process equivalent
        # of the row gradient is this divided by the world size.
        for k in ("x_a", "x_b"):
            r[k] /= WORLD
        results[case] = r
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, dict[str, torch.Tensor]]]:
    """Each rank's results for every case (spawned once for the module)."""
    return run_gloo(worker, WORLD, tmp_path_factory.mktemp("ddp"))


def single(case: str) -> dict[str, torch.Tensor]:
    """The single-process loss and gradients on the full 2B-pair batch."""
    x_a, x_b, _ = make_batch()
    return loss_and_grads(x_a, x_b, MASK if case == "masked" else None, gather=False)


@pytest.mark.parametrize("case", CASES)
def test_gathered_loss_equals_full_batch_on_each_rank(ranks, case: str) -> None:
    want = single(case)["loss"]
    got = [float(r[case]["loss"]) for r in ranks]
    assert got == pytest.approx([float(want)] * WORLD, abs=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_ddp_averaged_gradients_equal_full_batch(ranks, case: str) -> None:
    want = single(case)
    for rank, r in enumerate(ranks):
        rows = slice(rank * B, (rank + 1) * B)
        for k in ("weight", "bias"):
            torch.testing.assert_close(r[case][k], want[k], atol=1e-5, rtol=0, msg=f"{k} r{rank}")
        for k in ("x_a", "x_b"):
            torch.testing.assert_close(
                r[case][k], want[k][rows], atol=1e-5, rtol=0, msg=f"{k} rank {rank}"
            )
