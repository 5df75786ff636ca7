"""SimCLR (Chen et al., 2020): NT-Xent between two views, one projector per modality.

Cross-modal term: NT-Xent between the dermoscopic and clinical projections of the same view
index (derm v1 <-> clinic v1, derm v2 <-> clinic v2, averaged), through the same projectors as
the intra-modal terms; pairs with a stand-in clinical image are not positives. SM3 stage 1 is
this with separate cross-modal projectors. Loss: our ``nt_xent`` (pair masks, gathered
negatives with correct DDP gradients).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from skinssl.lightning_modules.baselines.base import Outputs, Pretraining, halves
from skinssl.lightning_modules.losses import nt_xent
from skinssl.lightning_modules.nets import projector


class SimCLR(Pretraining):
    """SimCLR, single- or multi-modal (see the module docstring).

    Args:
        proj_hidden: hidden width of the projector.
        proj_dim: output size of the projector.
        proj_layers: linear layers of the projector.
        temperature: NT-Xent temperature.
        gather_negatives: use the other devices' samples as negatives too.
        **kwargs: the shared arguments of :class:`Pretraining` (modality, trunks, optimiser).
    """

    per_view_reference: ClassVar[bool] = False  # its reference code: both views in one batch

    def __init__(
        self,
        proj_hidden: int = 2048,
        proj_dim: int = 128,
        proj_layers: int = 3,
        temperature: float = 0.1,
        gather_negatives: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.projectors = self.per_modality(
            lambda: projector(self.feature_dim, proj_hidden, proj_dim, proj_layers)
        )

    def encode(self, modality: str, views: Tensor) -> Outputs:
        return {"z": self.each_view(self.embedder(modality), views)}

    def _nt_xent(self, a: Tensor, b: Tensor, valid: Tensor | None = None) -> Tensor:
        hp = self.hparams
        return nt_xent(a, b, hp.temperature, valid, gather=hp.gather_negatives)

    def intra_loss(self, modality: str, out: Outputs) -> Tensor:
        return self._nt_xent(*halves(out["z"]))

    def cross_loss(self, derm: Outputs, clinic: Outputs, valid: Tensor) -> Tensor:
        pairs = zip(halves(derm["z"]), halves(clinic["z"]), strict=True)
        return sum(self._nt_xent(d, c, valid) for d, c in pairs) / 2
