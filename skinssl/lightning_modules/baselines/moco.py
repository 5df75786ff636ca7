"""MoCo v2 (Chen et al., 2020), symmetrised: queries against momentum keys and a key queue.

Per modality: query = trunk -> 2-layer MLP head; key = the momentum copy of both (EMA after
every optimiser step; ``momentum == momentum_end`` keeps the rate constant as in MoCo v2). Loss:
InfoNCE of each view's query against the other view's key, the negatives being that modality's
queue of earlier keys (lightly's memory bank, filled with the keys of all ranks, as a true
first-in-first-out ring: :class:`KeyQueue`). The saved ``encoder.*`` is the query trunk.

There is no shuffled BatchNorm (MoCo's guard against a query and its key sharing batch
statistics that the queued negatives lack); each view is its own BatchNorm batch
(``per_view_batchnorm``), and the published configs synchronise BatchNorm across GPUs.

Cross-modal term: each modality's query against the other modality's key of the same case and
view index, with the other modality's queue as negatives (both directions and views averaged),
over cases with a real clinical image.
"""

from __future__ import annotations

from typing import Any

import torch
from lightly.models.modules.heads import MoCoProjectionHead
from lightly.models.modules.memory_bank import MemoryBankModule
from lightly.models.utils import concat_all_gather
from lightly.utils import dist
from torch import Tensor, nn

from skinssl.lightning_modules.baselines.base import Outputs, halves
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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
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

    def encode(self, modality: str, views: Tensor) -> Outputs:
        q = self.each_view(self.embedder(modality), views)
        k = self.momentum_embed(modality, views)
        # the queue as it was before this step; this step's keys (all ranks') go in after
        _, queue = self.queues[modality](k, update=True)
        return {"q": q, "k": k, "queue": queue}

    def _info_nce(self, q: Tensor, k: Tensor, queue: Tensor, valid: Tensor | None = None) -> Tensor:
        return info_nce(q, k, queue, self.hparams.temperature, valid)

    def intra_loss(self, modality: str, out: Outputs) -> Tensor:
        (q1, q2), (k1, k2) = halves(out["q"]), halves(out["k"])
        return (self._info_nce(q1, k2, out["queue"]) + self._info_nce(q2, k1, out["queue"])) / 2

    def cross_loss(self, derm: Outputs, clinic: Outputs, valid: Tensor) -> Tensor:
        terms = [
            self._info_nce(q, k, b["queue"], valid)
            for a, b in ((derm, clinic), (clinic, derm))
            for q, k in zip(halves(a["q"]), halves(b["k"]), strict=True)
        ]
        return sum(terms) / len(terms)

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
