"""BYOL (Grill et al., 2020): an online network predicts a momentum target's projection.

Per modality: online trunk -> projector -> predictor; the target is the momentum copy of the
trunk and projector (EMA after every optimiser step, rate rising from ``momentum`` to
``momentum_end`` on a cosine, as in the paper). Loss: normalised MSE (2 - 2 cos), symmetrised
over the two views. The saved ``encoder.*`` is the online trunk.

Cross-modal term: each modality's online prediction of the other modality's target projection
of the same view index (derm -> clinic and clinic -> derm, both views, averaged), over cases with
a real clinical image.
"""

from __future__ import annotations

from typing import Any

from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead
from torch import Tensor

from skinssl.lightning_modules.baselines.base import Outputs, across, swapped
from skinssl.lightning_modules.baselines.losses import normalized_mse
from skinssl.lightning_modules.baselines.momentum import MomentumPretraining


class BYOL(MomentumPretraining):
    """BYOL, single- or multi-modal (see the module docstring); heads are lightly's.

    Args:
        proj_hidden: hidden width of projector and predictor (paper: 4096).
        proj_dim: output size of projector and predictor (paper: 256).
        momentum: EMA rate of the target at the first step (paper: 0.996).
        momentum_end: EMA rate at the last step (paper: 1.0).
        **kwargs: the shared arguments of :class:`Pretraining` (modality, trunks, optimiser).
    """

    def __init__(
        self,
        proj_hidden: int = 4096,
        proj_dim: int = 256,
        momentum: float = 0.99,
        momentum_end: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.projectors = self.per_modality(
            lambda: BYOLProjectionHead(self.feature_dim, proj_hidden, proj_dim)
        )
        self.predictors = self.per_modality(
            lambda: BYOLPredictionHead(proj_dim, proj_hidden, proj_dim)
        )
        self.init_momentum()

    def encode(self, modality: str, views: Tensor) -> Outputs:
        embed, predict = self.embedder(modality), self.predictors[modality]
        p = self.each_view(lambda v: predict(embed(v)), views)
        return {"p": p, "target": self.momentum_embed(modality, views)}

    def intra_loss(self, modality: str, out: Outputs) -> Tensor:
        return swapped(normalized_mse, out["p"], out["target"])

    def cross_loss(self, derm: Outputs, clinic: Outputs, valid: Tensor) -> Tensor:
        return across(lambda p, t, _: normalized_mse(p, t, valid), derm, clinic, "p", "target")
