"""Barlow Twins (Zbontar et al., 2021): the cross-correlation of two views' projections made
close to the identity (invariance on the diagonal, redundancy reduction off it).

Per modality: trunk -> 3-layer projector (lightly's head); loss: lightly's Barlow Twins loss on
the whole batch of all ranks (rows gathered with gradients before the per-dimension
standardisation).

Cross-modal term: the same loss between dermoscopic and clinical projections of the same view
index (both views averaged), on the cases with a real clinical image.
"""

from __future__ import annotations

from typing import Any

from lightly.models.modules.heads import BarlowTwinsProjectionHead
from torch import Tensor

from skinssl.lightning_modules.baselines.base import Outputs, Pretraining, halves
from skinssl.lightning_modules.baselines.losses import barlow_twins


class BarlowTwins(Pretraining):
    """Barlow Twins, single- or multi-modal (see the module docstring).

    Args:
        proj_hidden: hidden width of the projector (paper: 8192).
        proj_dim: output size of the projector (paper: 8192).
        lambda_offdiag: weight of the off-diagonal (redundancy) term (paper: 5e-3).
        **kwargs: the shared arguments of :class:`Pretraining` (modality, trunks, optimiser).
    """

    def __init__(
        self,
        proj_hidden: int = 8192,
        proj_dim: int = 8192,
        lambda_offdiag: float = 5e-3,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.projectors = self.per_modality(
            lambda: BarlowTwinsProjectionHead(self.feature_dim, proj_hidden, proj_dim)
        )

    def encode(self, modality: str, views: Tensor) -> Outputs:
        return {"z": self.each_view(self.embedder(modality), views)}

    def intra_loss(self, modality: str, out: Outputs) -> Tensor:
        return barlow_twins(*halves(out["z"]), self.hparams.lambda_offdiag)

    def cross_loss(self, derm: Outputs, clinic: Outputs, valid: Tensor) -> Tensor:
        lam = self.hparams.lambda_offdiag
        pairs = zip(halves(derm["z"]), halves(clinic["z"]), strict=True)
        return sum(barlow_twins(d, c, lam, valid) for d, c in pairs) / 2
