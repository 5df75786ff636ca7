"""What every baseline pretraining method shares: trunks, modality choice, views, loss, optimiser.

A method subclasses :class:`Pretraining` and says only what is its own: the heads it adds,
``encode`` (a modality's two views -> its outputs), ``intra_loss`` (one modality's two views)
and, if it has one, ``cross_loss`` (dermoscopic vs clinical views of the same case).

``modality``: ``derm`` or ``clinic`` pretrain one trunk on that modality's images only; the
trunk is shared by both names of the :class:`PairEncoder`, so the checkpoint holds it as
``encoder.derm`` and ``encoder.clinic`` and initialises both trunks of a downstream model (every
row of a comparison then has the same downstream model and inputs). ``both`` trains two trunks:
each modality's intra-modal loss plus ``cross_weight`` times the cross-modal term.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal, get_args

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from skinssl.lightning_modules.nets import Arch, PairEncoder, two_views
from skinssl.lightning_modules.optim import Schedule, configure_adamw

Modality = Literal["derm", "clinic", "both"]
MODALITIES: tuple[str, ...] = get_args(Modality)
Outputs = dict[str, Tensor]


def halves(x: Tensor) -> tuple[Tensor, Tensor]:
    """(view 1, view 2) rows of a tensor holding both views stacked."""
    n = x.shape[0] // 2
    return x[:n], x[n:]


def swapped(loss: Callable[[Tensor, Tensor], Tensor], first: Tensor, second: Tensor) -> Tensor:
    """The mean of ``loss`` from each view of ``first`` to the other view of ``second`` (both
    views stacked [2N, ...]): the symmetric loss between two views of one modality."""
    (a1, a2), (b1, b2) = halves(first), halves(second)
    return (loss(a1, b2) + loss(a2, b1)) / 2


def across(
    loss: Callable[[Tensor, Tensor, Outputs], Tensor],
    derm: Outputs,
    clinic: Outputs,
    source: str,
    target: str,
) -> Tensor:
    """The mean of ``loss(source of one modality, target of the other, the other's outputs)``
    over both directions and both views (view 1 with view 1, view 2 with view 2): the
    cross-modal loss of the same cases."""
    terms = [
        loss(s, t, b)
        for a, b in ((derm, clinic), (clinic, derm))
        for s, t in zip(halves(a[source]), halves(b[target]), strict=True)
    ]
    return sum(terms) / len(terms)


class Pretraining(L.LightningModule):
    """Base of the baseline pretraining methods (not used on its own).

    Args:
        modality: ``derm``, ``clinic`` (one trunk) or ``both`` (two trunks, cross-modal term).
        backbone: torchvision ResNet of each trunk.
        weights: trunk initialisation: None, ``"imagenet"`` or a local state-dict file.
        cross_weight: weight of the cross-modal term (``both`` only; methods without one: 0).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        adam_eps: AdamW's eps (1e-5, as SM3's stage 1).
        schedule: ``constant`` or ``cosine`` (per step, after warm-up).
        warmup_epochs: epochs of linear warm-up.
        lr_reference_batch: if set, learning rates are multiplied by global batch size / this.
        per_view_batchnorm: each view goes through the networks on its own, so BatchNorm
            statistics are per view (as SM3's stage 1); false: both views in one pass; None:
            as the method's reference code (``per_view_reference``).
    """

    has_cross: ClassVar[bool] = True
    """Whether the method defines a cross-modal term (``cross_loss``)."""
    per_view_reference: ClassVar[bool] = True
    """Whether the method's reference code passes each view through the networks on its own
    (BYOL, SimSiam, MoCo, Barlow Twins) rather than both in one batch (SimCLR, SwAV,
    DeepCluster-v2)."""

    def __init__(
        self,
        modality: Modality = "both",
        backbone: Arch = "resnet50",
        weights: str | None = None,
        cross_weight: float = 1.0,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        adam_eps: float = 1e-5,
        schedule: Schedule = "constant",
        warmup_epochs: float = 0,
        lr_reference_batch: int | None = None,
        per_view_batchnorm: bool | None = None,
    ) -> None:
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"modality {modality!r} is not one of {', '.join(MODALITIES)}")
        if cross_weight < 0:
            raise ValueError(f"cross_weight must be >= 0, got {cross_weight}")
        self._check_hooks()
        # a method without a cross-modal term has no cross_weight argument to record
        self.save_hyperparameters(ignore=None if self.has_cross else ["cross_weight"])
        self.cross_weight = cross_weight
        self.per_view = (
            self.per_view_reference if per_view_batchnorm is None else per_view_batchnorm
        )
        self.modalities = ("derm", "clinic") if modality == "both" else (modality,)
        self.encoder = PairEncoder(backbone, weights, share_trunk=modality != "both")
        self.feature_dim = self.encoder.feature_dim

    def _check_hooks(self) -> None:
        """A method defines ``encode``, ``intra_loss`` and ``cross_loss`` (unless it has no
        cross-modal term), or a ``loss_terms`` of its own."""
        own = type(self)
        if own.loss_terms is not Pretraining.loss_terms:
            return
        hooks = ("encode", "intra_loss") + (("cross_loss",) if self.has_cross else ())
        missing = [h for h in hooks if getattr(own, h) is getattr(Pretraining, h)]
        if missing:
            raise TypeError(
                f"{own.__name__} does not define {', '.join(missing)}: a method defines "
                "encode and intra_loss, and cross_loss unless it sets has_cross = False (or "
                "its own loss_terms)"
            )

    @property
    def uses_cross(self) -> bool:
        return self.hparams.modality == "both" and self.has_cross and self.cross_weight > 0

    def trunk(self, modality: str) -> nn.Module:
        return getattr(self.encoder, modality)

    def embedder(self, modality: str) -> Callable[[Tensor], Tensor]:
        """The modality's trunk, then its projector (every method has ``projectors``)."""
        trunk, projector = self.trunk(modality), self.projectors[modality]
        return lambda views: projector(trunk(views))

    def per_modality(self, make: Callable[[], nn.Module]) -> nn.ModuleDict:
        """One new module (a head) per trained modality."""
        return nn.ModuleDict({m: make() for m in self.modalities})

    # ------------------------------------------------------------ per method
    def encode(self, modality: str, views: Tensor) -> Outputs:
        """A modality's outputs for its two views stacked [2N, ...] (networks applied with
        ``each_view``)."""
        raise NotImplementedError

    def intra_loss(self, modality: str, out: Outputs) -> Tensor:
        """The method's loss between the two views of one modality."""
        raise NotImplementedError

    def cross_loss(self, derm: Outputs, clinic: Outputs, valid: Tensor) -> Tensor:
        """The method's loss between dermoscopic and clinical views of the same cases, over the
        cases whose ``valid`` is True, on the scale of one intra-modal term."""
        raise NotImplementedError

    # ---------------------------------------------------------------- shared
    def on_fit_start(self) -> None:
        """Warn when the datamodule makes training views of a modality this run never uses."""
        datamodule = getattr(self.trainer, "datamodule", None)
        for m in ("derm", "clinic"):
            views = getattr(datamodule, f"{m}_views", None)
            if m not in self.modalities and getattr(views, "n", 0) > 0:
                used = self.modalities[0]
                hint = f" (give {used}_views its own views: they default to derm_views)"
                rank_zero_warn(
                    f"{type(self).__name__} with modality {used!r} does not use the {views.n} "
                    f"{m} views made per case; data.init_args.{m}_views: {{n: 0}} skips them"
                    + (hint if m == "derm" else "")
                )

    def each_view(self, network: Callable[[Tensor], Tensor], views: Tensor) -> Tensor:
        """``network`` of both views stacked [2N, ...]: a view at a time with
        ``per_view_batchnorm`` (BatchNorm statistics per view), else in one pass."""
        if not self.per_view:
            return network(views)
        return torch.cat([network(v) for v in halves(views)])

    def two_views(self, batch: dict[str, Any], modality: str) -> Tensor:
        """Both views of ``modality`` stacked [2N, 3, H, W]; a clear error without two."""
        return torch.cat(two_views(batch[modality], modality, type(self).__name__))

    def loss_terms(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Each unweighted term: ``intra_<modality>`` per modality, ``cross`` if used."""
        out = {m: self.encode(m, self.two_views(batch, m)) for m in self.modalities}
        terms = {f"intra_{m}": self.intra_loss(m, out[m]) for m in self.modalities}
        if self.uses_cross:
            terms["cross"] = self.cross_loss(out["derm"], out["clinic"], batch["pair_valid"])
        return terms

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        terms = self.loss_terms(batch)
        loss = sum(v for k, v in terms.items() if k.startswith("intra_"))
        if "cross" in terms:
            loss = loss + self.cross_weight * terms["cross"]
        n = len(batch["index"])
        logs = {"train/loss": loss, **{f"train/loss_{k}": v for k, v in terms.items()}}
        self.log_dict(logs, batch_size=n)
        self.log("loss", loss, batch_size=n, prog_bar=True, logger=False)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        return configure_adamw(self, [{"params": list(self.parameters()), "lr": self.hparams.lr}])
