"""SimSiam (Chen & He, 2021): a predictor and a stop-gradient, no negatives, no momentum.

Per modality: trunk -> projector (3 layers, BN) -> predictor; loss D(p1, sg(z2))/2 +
D(p2, sg(z1))/2 with D the negative cosine similarity.

Cross-modal term: each modality's prediction of the other modality's (stop-gradient) projection
of the same view index, both directions and views averaged, over cases with a real clinical
image.
"""

from __future__ import annotations

from typing import Any

from lightly.models.modules.heads import SimSiamPredictionHead, SimSiamProjectionHead
from torch import Tensor

from skinssl.lightning_modules.baselines.base import Outputs, Pretraining, across, swapped
from skinssl.lightning_modules.baselines.losses import negative_cosine
from skinssl.lightning_modules.optim import configure_adamw


class SimSiam(Pretraining):
    """SimSiam, single- or multi-modal (see the module docstring); heads are lightly's.

    Args:
        proj_hidden: hidden width of the projector (paper: 2048).
        proj_dim: output size of projector and predictor (paper: 2048).
        pred_hidden: hidden width of the predictor bottleneck (paper: 512).
        fix_predictor_lr: the predictors train at ``lr`` throughout, outside the warm-up and
            cosine schedule of the rest (the paper's choice; the same under a constant rate).
        **kwargs: the shared arguments of :class:`Pretraining` (modality, trunks, optimiser).
    """

    def __init__(
        self,
        proj_hidden: int = 2048,
        proj_dim: int = 2048,
        pred_hidden: int = 512,
        fix_predictor_lr: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.projectors = self.per_modality(
            lambda: SimSiamProjectionHead(self.feature_dim, proj_hidden, proj_dim)
        )
        self.predictors = self.per_modality(
            lambda: SimSiamPredictionHead(proj_dim, pred_hidden, proj_dim)
        )

    def encode(self, modality: str, views: Tensor) -> Outputs:
        z = self.each_view(self.embedder(modality), views)
        return {"z": z, "p": self.each_view(self.predictors[modality], z)}

    def configure_optimizers(self) -> dict[str, Any]:
        if not self.hparams.fix_predictor_lr:
            return super().configure_optimizers()
        predictors = {id(p) for p in self.predictors.parameters()}
        rest = [p for p in self.parameters() if id(p) not in predictors]
        groups = [
            {"params": rest, "lr": self.hparams.lr},
            {"params": list(self.predictors.parameters()), "lr": self.hparams.lr, "fixed_lr": True},
        ]
        return configure_adamw(self, groups)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A clear error when a resume would restore an optimizer of the other layout (one
        parameter group without ``fix_predictor_lr``, two with it)."""
        states = checkpoint.get("optimizer_states") or []
        groups = len(states[0]["param_groups"]) if states else None
        if groups is not None and groups != (2 if self.hparams.fix_predictor_lr else 1):
            fixed = str(groups == 2).lower()
            raise ValueError(
                f"the checkpoint's optimizer has {groups} parameter group(s): its run trained "
                f"with fix_predictor_lr {fixed} (checkpoints from before the argument: false). "
                f"Resume it with --model.init_args.fix_predictor_lr={fixed}"
            )

    def intra_loss(self, modality: str, out: Outputs) -> Tensor:
        return swapped(negative_cosine, out["p"], out["z"])

    def cross_loss(self, derm: Outputs, clinic: Outputs, valid: Tensor) -> Tensor:
        return across(lambda p, z, _: negative_cosine(p, z, valid), derm, clinic, "p", "z")
