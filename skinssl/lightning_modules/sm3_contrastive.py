"""SM3 stage 1: multi-modal contrastive pretraining (two trunks, intra- and cross-modal NT-Xent).

loss = intra_weight * [NT-Xent(derm v1, derm v2) + NT-Xent(clinic v1, clinic v2)]
     + cross_weight * [NT-Xent(derm v1, clinic v1) + NT-Xent(derm v2, clinic v2)]

with separate intra-modal (g) and cross-modal (p) projectors per modality. Cross-modal pairs
whose clinical image is a stand-in (``pair_valid`` False) are not used as positives. As in the
authors' code, each view goes through the trunks and the cross-modal projectors on its own (its
own BatchNorm batch of N), and the intra-modal projectors take both views at once (2N);
``per_view_batchnorm: false`` makes one pass of 2N through the trunks and projectors alike.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from skinssl.lightning_modules.losses import alignment, nt_xent, uniformity
from skinssl.lightning_modules.nets import Arch, PairEncoder, projector, two_views
from skinssl.lightning_modules.optim import Schedule, configure_adamw


class SM3Contrastive(L.LightningModule):
    """Stage 1 of SM3. Needs two views per modality (``Views.simclr()`` in the data config).

    Args:
        backbone: torchvision ResNet of each trunk.
        weights: trunk initialisation: None, ``"imagenet"`` or a local state-dict file.
        share_trunk: one trunk for both modalities instead of two.
        proj_hidden: hidden width of the projectors.
        proj_dim: output size of the projectors.
        proj_layers: linear layers per projector.
        temperature: NT-Xent temperature.
        intra_weight: weight of each intra-modal term.
        cross_weight: weight of each of the two cross-modal terms.
        gather_negatives: use the other devices' samples as negatives too.
        per_view_batchnorm: one pass per view through the trunks and cross-modal projectors, as
            the authors (BatchNorm statistics per view); false: one pass of both views.
        lr: AdamW learning rate (the authors used a constant 1e-6 for 400 epochs).
        weight_decay: AdamW weight decay.
        adam_eps: AdamW's eps (the authors' stage 1: 1e-5).
        schedule: ``constant`` or ``cosine`` (per step, after warm-up).
        warmup_epochs: epochs of linear warm-up.
        lr_reference_batch: if set, learning rates are multiplied by global batch size / this
            (linear scaling); None keeps them as given.
    """

    def __init__(
        self,
        backbone: Arch = "resnet50",
        weights: str | None = None,
        share_trunk: bool = False,
        proj_hidden: int = 2048,
        proj_dim: int = 128,
        proj_layers: int = 3,
        temperature: float = 0.1,
        intra_weight: float = 1.0,
        cross_weight: float = 0.5,
        gather_negatives: bool = True,
        per_view_batchnorm: bool = True,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        adam_eps: float = 1e-5,
        schedule: Schedule = "constant",
        warmup_epochs: float = 0,
        lr_reference_batch: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = PairEncoder(backbone, weights, share_trunk)
        d = self.encoder.feature_dim
        self.intra_derm = projector(d, proj_hidden, proj_dim, proj_layers)
        self.intra_clinic = projector(d, proj_hidden, proj_dim, proj_layers)
        self.cross_derm = projector(d, proj_hidden, proj_dim, proj_layers)
        self.cross_clinic = projector(d, proj_hidden, proj_dim, proj_layers)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        derm = two_views(batch["derm"], "derm", "SM3Contrastive")
        clinic = two_views(batch["clinic"], "clinic", "SM3Contrastive")
        n = derm[0].shape[0]
        h_derm = self._views(self.encoder.derm, derm)
        h_clinic = self._views(self.encoder.clinic, clinic)
        zd, zc = self.intra_derm(h_derm), self.intra_clinic(h_clinic)
        pd = self._views(self.cross_derm, [h_derm[:n], h_derm[n:]])
        pc = self._views(self.cross_clinic, [h_clinic[:n], h_clinic[n:]])
        valid = batch["pair_valid"]
        pairs = {  # name: (a, b, valid pairs or None)
            "intra_derm": (zd[:n], zd[n:], None),
            "intra_clinic": (zc[:n], zc[n:], None),
            "cross_v1": (pd[:n], pc[:n], valid),
            "cross_v2": (pd[n:], pc[n:], valid),
        }
        terms = {
            name: nt_xent(a, b, hp.temperature, mask, gather=hp.gather_negatives)
            for name, (a, b, mask) in pairs.items()
        }
        intra = terms["intra_derm"] + terms["intra_clinic"]
        cross = terms["cross_v1"] + terms["cross_v2"]
        loss = hp.intra_weight * intra + hp.cross_weight * cross
        self._log_terms(loss, terms, pairs, n)
        return loss

    def _views(self, net: torch.nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
        """``net`` of the views, stacked: one call per view (``per_view_batchnorm``) or one
        call on all of them."""
        if self.hparams.per_view_batchnorm:
            return torch.cat([net(v) for v in views])
        return net(torch.cat(views))

    @torch.no_grad()
    def _log_terms(
        self,
        loss: torch.Tensor,
        terms: dict[str, torch.Tensor],
        pairs: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
        n: int,
    ) -> None:
        """Each loss term; positive-pair cosine, alignment and uniformity of the embeddings
        (cross-modal: over the valid pairs; NaN in a batch without any)."""
        logs = {
            "train/loss": loss,
            "train/loss_intra_derm": terms["intra_derm"],
            "train/loss_intra_clinic": terms["intra_clinic"],
            "train/loss_cross": terms["cross_v1"] + terms["cross_v2"],
        }
        for name, key in (("intra_derm",) * 2, ("intra_clinic",) * 2, ("cross", "cross_v1")):
            a, b, mask = pairs[key]  # the valid pairs weighted, not selected: no device sync
            w = torch.ones(len(a), device=a.device) if mask is None else mask.float()
            cos = torch.cosine_similarity(a.float(), b.float())
            logs[f"train/pos_cos_{name}"] = (cos * w).sum() / w.sum()
            logs[f"train/align_{name}"] = alignment(a, b, w)
            logs[f"train/uniform_{name}"] = uniformity(torch.cat([a, b]), weight=w.repeat(2))
        self.log_dict(logs, batch_size=n, prog_bar=False)
        self.log("loss", loss, batch_size=n, prog_bar=True, logger=False)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = [{"params": list(self.parameters()), "lr": hp.lr}]
        return configure_adamw(self, groups)
