"""SM3 stage 1 on two gloo ranks x B pairs gives the loss and gradients of one process x 2B.

BatchNorm is put in eval mode: SyncBatchNorm (which makes training-mode statistics match across
ranks) runs on GPUs only, so on the CPU only the cross-rank gathering of negatives is compared.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from helpers import run_gloo

from skinssl.lightning_modules import SM3Contrastive

pytestmark = [
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()), reason="gloo backend unavailable"
    ),
    pytest.mark.filterwarnings("ignore:You are trying to `self.log"),  # no trainer attached
]
WORLD, B = 2, 3


def model_and_batch() -> tuple[SM3Contrastive, dict]:
    """The same initialisation and 2B-pair batch in every process (one stand-in pair)."""
    torch.manual_seed(0)
    model = SM3Contrastive(backbone="resnet18", proj_hidden=32, proj_dim=16).eval()
    gen = torch.Generator().manual_seed(1)
    views = [torch.randn(WORLD * B, 3, 32, 32, generator=gen) for _ in range(4)]
    valid = torch.ones(WORLD * B, dtype=torch.bool)
    valid[1] = False
    return model, {"derm": views[:2], "clinic": views[2:], "pair_valid": valid}


def step(model: SM3Contrastive, batch: dict) -> dict[str, torch.Tensor]:
    loss = model.training_step(batch, 0)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return {"loss": loss.detach(), **grads}


def worker(rank: int) -> dict[str, torch.Tensor]:
    model, batch = model_and_batch()
    rows = slice(rank * B, (rank + 1) * B)
    shard = {
        "derm": [v[rows] for v in batch["derm"]],
        "clinic": [v[rows] for v in batch["clinic"]],
        "pair_valid": batch["pair_valid"][rows],
    }
    out = step(model, shard)
    for name, grad in out.items():
        if name != "loss":  # DDP averages gradients over ranks
            dist.all_reduce(grad)
            grad /= WORLD
    return out


def test_two_ranks_match_one_process(tmp_path) -> None:
    want = step(*model_and_batch())
    for rank, got in enumerate(run_gloo(worker, WORLD, tmp_path)):
        assert float(got["loss"]) == pytest.approx(float(want["loss"]), abs=1e-5)
        assert set(got) == set(want)
        for name in want:
            torch.testing.assert_close(
                got[name], want[name], atol=2e-5, rtol=1e-4, msg=f"{name}, rank {rank}"
            )
