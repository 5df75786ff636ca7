"""Barlow Twins (Zbontar et al., 2021): the cross-correlation of two views' projections made
close to the identity (invariance on the diagonal, redundancy reduction off it).

Per modality: trunk -> 3-layer projector (lightly's head); loss: lightly's Barlow Twins loss on
the whole batch of all ranks (rows gathered with gradients before the per-dimension
standardisation).

Cross-modal term: the same loss between dermoscopic and clinical projections of the same view
index (both views averaged), on the cases with a real clinical image.
"""

from __future__ import annotations

from lightly.models.modules.heads import BarlowTwinsProjectionHead
from torch import Tensor

from skinssl.lightning_modules.baselines.base import Modality, Outputs, Pretraining, halves
from skinssl.lightning_modules.baselines.losses import barlow_twins
from skinssl.lightning_modules.nets import Arch
from skinssl.lightning_modules.optim import Schedule


class BarlowTwins(Pretraining):
    """Barlow Twins, single- or multi-modal (see the module docstring).

    Args:
        modality: ``derm``, ``clinic`` or ``both``.
        backbone: torchvision ResNet of each trunk.
        weights: trunk initialisation: None, ``"imagenet"`` or a local state-dict file.
        cross_weight: weight of the cross-modal term (``both``).
        proj_hidden: hidden width of the projector (paper: 8192).
        proj_dim: output size of the projector (paper: 8192).
        lambda_offdiag: weight of the off-diagonal (redundancy) term (paper: 5e-3).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        schedule: ``constant`` or ``cosine``.
        warmup_epochs: epochs of linear warm-up.
        lr_reference_batch: if set, learning rates are multiplied by global batch size / this.
    """

    def __init__(
        self,
        modality: Modality = "both",
        backbone: Arch = "resnet50",
        weights: str | None = None,
        cross_weight: float = 1.0,
        proj_hidden: int = 8192,
        proj_dim: int = 8192,
        lambda_offdiag: float = 5e-3,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        schedule: Schedule = "constant",
        warmup_epochs: float = 0,
        lr_reference_batch: int | None = None,
    ) -> None:
        super().__init__(
            modality, backbone, weights, cross_weight, lr, weight_decay, schedule,
            warmup_epochs, lr_reference_batch,
        )  # fmt: skip
        self.projectors = self.per_modality(
            lambda: BarlowTwinsProjectionHead(self.feature_dim, proj_hidden, proj_dim)
        )

    def encode(self, modality: str, views: Tensor) -> Outputs:
        return {"z": self.projectors[modality](self.trunk(modality)(views))}

    def intra_loss(self, modality: str, out: Outputs) -> Tensor:
        return barlow_twins(*halves(out["z"]), self.hparams.lambda_offdiag)

    def cross_loss(self, derm: Outputs, clinic: Outputs, valid: Tensor) -> Tensor:
        lam = self.hparams.lambda_offdiag
        pairs = zip(halves(derm["z"]), halves(clinic["z"]), strict=True)
        return sum(barlow_twins(d, c, lam, valid) for d, c in pairs) / 2
