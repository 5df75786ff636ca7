"""MoCo v2 (Chen et al., 2020), symmetrised: queries against momentum keys and a key queue.

Per modality: query = trunk -> 2-layer MLP head; key = the momentum copy of both (EMA after
every optimiser step; ``momentum == momentum_end`` keeps the rate constant as in MoCo v2). Loss:
InfoNCE of each view's query against the other view's key, the negatives being that modality's
queue of earlier keys (lightly's memory bank, filled with the keys of all ranks, as a true
first-in-first-out ring: :class:`KeyQueue`). The saved ``encoder.*`` is the query trunk.

Shuffled BatchNorm (``shuffle_groups``, MoCo's guard against a query and its key sharing
BatchNorm statistics, which the queued negatives lack): the key encoder sees the views of every
rank shuffled and split into groups, each its own BatchNorm batch (MoCo v2: one per GPU). With
one group, keys and queries have the same BatchNorm batches.

Cross-modal term: each modality's query against the other modality's key of the same case and
view index, with the other modality's queue as negatives (both directions and views averaged),
over cases with a real clinical image.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightly.models.modules.heads import MoCoProjectionHead
from lightly.models.modules.memory_bank import MemoryBankModule
from lightly.models.utils import concat_all_gather
from lightly.utils import dist
from torch import Tensor, nn

from skinssl.lightning_modules.baselines.base import Outputs, across, swapped
from skinssl.lightning_modules.baselines.losses import info_nce
from skinssl.lightning_modules.baselines.momentum import MomentumPretraining


class KeyQueue(MemoryBankModule):
    """lightly's memory bank as a ring: keys past its end go on at its start (lightly drops
    them, so with a queue not a multiple of the keys per step some keys never enter it)."""

    def _dequeue_and_enqueue(self, batch: Tensor) -> None:
        if self.gather_distributed and dist.world_size() > 1:
            batch = concat_all_gather(batch)
        size, n = self.size[0], batch.shape[0]
        kept = batch.detach()[-size:]  # more keys than the queue holds: the latest
        start = self.bank_ptr + (n - len(kept))
        rows = (start + torch.arange(len(kept), device=kept.device)) % size
        self.bank[rows] = kept.to(self.bank.dtype)
        self.bank_ptr.copy_((self.bank_ptr + n) % size)  # on the device: no sync


@torch.no_grad()
def shuffled_batchnorm(network: Callable[[Tensor], Tensor], x: Tensor, groups: int) -> Tensor:
    """``network(x)`` with MoCo's shuffled BatchNorm: the rows of every rank's ``x`` shuffled
    and split into ``groups`` batches (``groups`` / world size on each rank; fewer when a batch
    is too small for two rows in each), each its own BatchNorm batch; the outputs come back in
    ``x``'s rows. No host synchronisation."""
    world = dist.world_size()
    every = concat_all_gather(x) if world > 1 else x
    order = torch.randperm(len(every), device=x.device)
    if world > 1:
        torch.distributed.broadcast(order, src=0)  # one shuffle for all ranks
    mine = order.view(world, -1)[dist.rank()]
    parts = max(1, min(groups // world, len(x) // 2))  # (equal on every rank: len(x) is)
    out = torch.cat([network(part) for part in every[mine].tensor_split(parts)])
    out = concat_all_gather(out) if world > 1 else out
    return out[torch.argsort(order)].view(world, len(x), *out.shape[1:])[dist.rank()]


class MoCo(MomentumPretraining):
    """MoCo v2, single- or multi-modal (see the module docstring); head and queue are lightly's.

    Args:
        proj_hidden: hidden width of the head (paper: 2048).
        proj_dim: output size of the head (paper: 128).
        temperature: InfoNCE temperature (paper: 0.2).
        queue_size: keys kept per modality as negatives (paper: 65536 for ImageNet; keep it
            below the number of training views so that a case rarely meets its own old key).
        momentum: EMA rate of the key encoder at the first step (paper: 0.999).
        momentum_end: EMA rate at the last step (equal to ``momentum``: constant).
        shuffle_groups: BatchNorm batches of the key encoder, drawn at random from the views
            of all ranks (a multiple of the number of processes, which needs
            ``trainer.sync_batchnorm: false``); 1: none (keys normalised as the queries).
        **kwargs: the shared arguments of :class:`Pretraining` (modality, trunks, optimiser).
    """

    def __init__(
        self,
        proj_hidden: int = 2048,
        proj_dim: int = 128,
        temperature: float = 0.2,
        queue_size: int = 256,
        momentum: float = 0.99,
        momentum_end: float = 0.99,
        shuffle_groups: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if shuffle_groups < 1:
            raise ValueError(f"shuffle_groups must be >= 1, got {shuffle_groups}")
        self.projectors = self.per_modality(
            lambda: MoCoProjectionHead(self.feature_dim, proj_hidden, proj_dim)
        )
        self.queues = nn.ModuleDict(
            {
                m: KeyQueue((queue_size, proj_dim), gather_distributed=True,
                            feature_dim_first=False)
                for m in self.modalities
            }
        )  # fmt: skip
        self.init_momentum()

    def on_fit_start(self) -> None:
        """A clear error when the key groups cannot be split evenly over the ranks, or when
        BatchNorm is synchronised across them (every group would get the global batch's)."""
        super().on_fit_start()
        groups, world = self.hparams.shuffle_groups, self.trainer.world_size
        if groups == 1:
            return
        if groups % world:
            raise ValueError(
                f"shuffle_groups {groups} must be a multiple of the number of processes "
                f"({world}): each process normalises the same number of groups"
            )
        if any(isinstance(m, nn.SyncBatchNorm) for m in self.momentum_encoder.modules()):
            raise ValueError(
                f"shuffle_groups {groups} needs trainer.sync_batchnorm: false (synchronised "
                "BatchNorm normalises every group with the statistics of all of them)"
            )

    @torch.no_grad()
    def momentum_embed(self, modality: str, views: Tensor) -> Tensor:
        """The keys, with shuffled BatchNorm when ``shuffle_groups`` > 1."""
        groups = self.hparams.shuffle_groups
        if groups == 1:
            return super().momentum_embed(modality, views)
        network = self.momentum_embedder(modality)
        return self.each_view(lambda v: shuffled_batchnorm(network, v, groups), views)

    def encode(self, modality: str, views: Tensor) -> Outputs:
        q = self.each_view(self.embedder(modality), views)
        k = self.momentum_embed(modality, views)
        # the queue as it was before this step; this step's keys (all ranks') go in after
        _, queue = self.queues[modality](k, update=True)
        return {"q": q, "k": k, "queue": queue}

    def _info_nce(self, q: Tensor, k: Tensor, queue: Tensor, valid: Tensor | None = None) -> Tensor:
        return info_nce(q, k, queue, self.hparams.temperature, valid)

    def intra_loss(self, modality: str, out: Outputs) -> Tensor:
        return swapped(lambda q, k: self._info_nce(q, k, out["queue"]), out["q"], out["k"])

    def cross_loss(self, derm: Outputs, clinic: Outputs, valid: Tensor) -> Tensor:
        # a key's negatives: the queue of its own modality
        info_nce = lambda q, k, keys: self._info_nce(q, k, keys["queue"], valid)  # noqa: E731
        return across(info_nce, derm, clinic, "q", "k")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The key queues (non-persistent buffers in lightly) go into the checkpoint too."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["moco_queues"] = {
            m: {"bank": q.bank.detach().cpu(), "pointer": q.bank_ptr.detach().cpu()}
            for m, q in self.queues.items()
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed run continues with the queues it stopped with."""
        super().on_load_checkpoint(checkpoint)
        for m, saved in checkpoint.get("moco_queues", {}).items():
            self.queues[m].bank.copy_(saved["bank"])
            self.queues[m].bank_ptr.copy_(saved["pointer"])
