"""SwAV (Caron et al., 2020): swapped prediction of Sinkhorn codes over learned prototypes.

Per modality: trunk -> projector (lightly's head) -> L2-normalised embedding; scores against
bias-free prototypes (unit vectors, renormalised before every step, frozen for the first
``freeze_prototypes_epochs``). Codes: Sinkhorn-Knopp over all ranks (lightly's ``sinkhorn``).
Each view predicts the other view's codes. Two views, no multi-crop and no queue (Derm7pt has
413 training cases: a queue would hold the same cases again).

Cross-modal term: the prototypes are shared by both modalities, so each modality's view
predicts the other modality's codes of the same case and view index (both directions and views
averaged), over cases with a real clinical image.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from lightly.models.modules.heads import SwaVProjectionHead
from torch import Tensor, nn

from skinssl.lightning_modules.baselines.base import Outputs, Pretraining, across, halves, swapped
from skinssl.lightning_modules.baselines.losses import swapped_prediction, swav_codes


class SwAV(Pretraining):
    """SwAV, single- or multi-modal (see the module docstring).

    Args:
        proj_hidden: hidden width of the projector (paper: 2048).
        proj_dim: embedding size (paper: 128).
        num_prototypes: prototypes shared by both modalities (paper: 3000 for ImageNet).
        temperature: softmax temperature of the swapped prediction (paper: 0.1).
        sinkhorn_iterations: Sinkhorn-Knopp iterations (paper: 3).
        sinkhorn_epsilon: entropy regularisation of the codes (paper: 0.05).
        freeze_prototypes_epochs: epochs during which the prototypes are not updated.
        **kwargs: the shared arguments of :class:`Pretraining` (modality, trunks, optimiser).
    """

    per_view_reference: ClassVar[bool] = False  # its reference code: both views in one batch

    def __init__(
        self,
        proj_hidden: int = 2048,
        proj_dim: int = 128,
        num_prototypes: int = 30,
        temperature: float = 0.1,
        sinkhorn_iterations: int = 3,
        sinkhorn_epsilon: float = 0.05,
        freeze_prototypes_epochs: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if num_prototypes < 2:
            raise ValueError(f"num_prototypes must be >= 2, got {num_prototypes}")
        self.projectors = self.per_modality(
            lambda: SwaVProjectionHead(self.feature_dim, proj_hidden, proj_dim)
        )
        self.prototypes = nn.Linear(proj_dim, num_prototypes, bias=False)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def on_after_backward(self) -> None:
        if self.current_epoch < self.hparams.freeze_prototypes_epochs:
            self.prototypes.weight.grad = None

    def encode(self, modality: str, views: Tensor) -> Outputs:
        z = F.normalize(self.each_view(self.embedder(modality), views), dim=1)
        scores = self.prototypes(z)
        hp = self.hparams
        codes = torch.cat(
            [swav_codes(s, hp.sinkhorn_iterations, hp.sinkhorn_epsilon) for s in halves(scores)]
        )
        return {"scores": scores, "codes": codes}

    def _predict(self, scores: Tensor, codes: Tensor, valid: Tensor | None = None) -> Tensor:
        return swapped_prediction(scores, codes, self.hparams.temperature, valid)

    def intra_loss(self, modality: str, out: Outputs) -> Tensor:
        return swapped(self._predict, out["scores"], out["codes"])

    def cross_loss(self, derm: Outputs, clinic: Outputs, valid: Tensor) -> Tensor:
        predict = lambda s, q, _: self._predict(s, q, valid)  # noqa: E731
        return across(predict, derm, clinic, "scores", "codes")
