"""SM3 stage 2: pseudo-multi-labels learned through the label-relation-aware module.

Frozen trunks give the fused feature of both modalities; one token per clustered head passes the
label-relation module; bias-free prototype heads, reset from the k-means centroids at each
clustering (every ``every_n_epochs``) by the ``KMeansPseudoLabels`` callback, are trained with
cross-entropy on the cluster assignments (DeepCluster-v2 style). This module implements the
callback's clustering protocol: ``cluster_sizes``, ``cluster_embeddings``, ``set_clusters``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from skinssl.labels import CRITERIA, NUM_CLASSES, check_heads
from skinssl.lightning_modules.checkpoints import (
    checkpoint_kind,
    load_trunks,
    starting_weights,
)
from skinssl.lightning_modules.losses import mean_known_ce
from skinssl.lightning_modules.nets import Arch, PairEncoder
from skinssl.lightning_modules.optim import Schedule, configure_adamw
from skinssl.lightning_modules.relation import LabelTokens, Relation, normalize_tokens


class SM3PseudoLabels(L.LightningModule):
    """Stage 2 of SM3 (use with the ``KMeansPseudoLabels`` callback).

    Args:
        pretrained: stage-1 checkpoint whose trunks are used (None: trunks from ``weights``).
        backbone: torchvision ResNet of each trunk (must match ``pretrained``).
        weights: trunk initialisation when there is no ``pretrained`` checkpoint.
        share_trunk: one trunk for both modalities (must match ``pretrained``).
        heads: clustered heads (default: the 7 criteria; add ``DIAG`` as the authors' code).
        num_clusters: per-head K overriding the class count (over-clustering), e.g. {PN: 6}.
        embed_dim: token size of the label projectors.
        relation: ``transformer`` (the label-relation module) or ``none`` (the ablation).
        relation_layers: relation layers.
        relation_heads: attention heads per relation layer.
        relation_ffn: feed-forward width of the relation layers.
        relation_dropout: dropout of the relation layers.
        label_embedding: add a learned per-label embedding to each token.
        input_norm: standardise the fused feature (BatchNorm) before the label projectors.
        l2_norm: L2-normalise tokens before the prototypes (the authors kept it off).
        temperature: softmax temperature T of the prototype logits.
        train_trunks: train the trunks too (joint variant; default frozen, in eval mode).
        trunk_lr: learning rate of the trunks when trained.
        lr: AdamW learning rate of projectors, relation module and prototypes.
        weight_decay: AdamW weight decay.
        adam_eps: AdamW's eps (the authors' stage 2: PyTorch's default, 1e-8).
        schedule: ``constant`` or ``cosine``.
        warmup_epochs: epochs of linear warm-up.
        lr_reference_batch: if set, learning rates are multiplied by global batch size / this
            (linear scaling); None keeps them as given.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        backbone: Arch = "resnet50",
        weights: str | None = None,
        share_trunk: bool = False,
        heads: tuple[str, ...] = CRITERIA,
        num_clusters: dict[str, int] | None = None,
        embed_dim: int = 512,
        relation: Relation = "transformer",
        relation_layers: int = 1,
        relation_heads: int = 1,
        relation_ffn: int = 128,
        relation_dropout: float = 0.1,
        label_embedding: bool = False,
        input_norm: bool = False,
        l2_norm: bool = False,
        temperature: float = 1.0,
        train_trunks: bool = False,
        trunk_lr: float = 1e-5,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        adam_eps: float = 1e-8,
        schedule: Schedule = "constant",
        warmup_epochs: float = 0,
        lr_reference_batch: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.heads = check_heads(heads)
        sizes = {h: NUM_CLASSES[h] for h in self.heads} | dict(num_clusters or {})
        unknown = set(sizes) - set(self.heads)
        if unknown:
            raise ValueError(
                f"num_clusters names heads that are not clustered: {sorted(unknown)}; the "
                f"clustered heads: {list(self.heads)}"
            )
        single = sorted(h for h, k in sizes.items() if k < 2)
        if single:
            raise ValueError(
                f"num_clusters: heads {single} need K >= 2 (one cluster labels nothing)"
            )
        self.sizes = sizes
        self.encoder = PairEncoder(backbone, None if pretrained else weights, share_trunk)
        if starting_weights(pretrained):
            _, saved = load_trunks(
                self.encoder, pretrained, backbone, share_trunk, "pretrained checkpoint"
            )
            kind = checkpoint_kind(saved)
            rank_zero_info(f"pretrained={pretrained!r}: trunks loaded ({kind or 'a checkpoint'})")
        self.relation = LabelTokens.from_hparams(self.encoder.out_dim, self.heads, self.hparams)
        self.prototypes = nn.ModuleDict(
            {h: nn.Linear(embed_dim, k, bias=False) for h, k in sizes.items()}
        )
        empty = torch.empty(0, len(self.heads), dtype=torch.long)
        self.register_buffer("pseudo_labels", empty, persistent=False)  # the callback keeps them
        if not train_trunks:
            self.encoder.requires_grad_(False)
        self.train(self.training)  # frozen trunks in eval mode from the start

    def train(self, mode: bool = True) -> SM3PseudoLabels:
        """Frozen trunks stay in eval mode (BatchNorm statistics untouched in training; the
        k-means callback's ``fill: train`` pass moves them once, as the authors' code)."""
        super().train(mode)
        if not self.hparams.train_trunks:
            self.encoder.eval()
        return self

    def on_fit_start(self) -> None:
        if not self.hparams.train_trunks:
            rank_zero_info("trunks frozen: in eval mode in training steps (train_trunks: false)")

    def on_train_epoch_start(self) -> None:
        self.train()  # Lightning restores per-module modes; frozen trunks must stay in eval

    def tokens(self, batch: dict[str, Any]) -> torch.Tensor:
        """Label tokens [B, H, D] of a batch."""
        with torch.set_grad_enabled(self.hparams.train_trunks and torch.is_grad_enabled()):
            fused = self.encoder(batch["derm"], batch["clinic"])
        return normalize_tokens(self.relation(fused), self.hparams.l2_norm)

    # ---------------------------------------------------------- clustering protocol
    def cluster_sizes(self) -> dict[str, int]:
        return dict(self.sizes)

    def cluster_embeddings(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        tokens = self.tokens(batch)
        return {h: tokens[:, i] for i, h in enumerate(self.heads)}

    def set_clusters(
        self, centroids: dict[str, torch.Tensor], labels: torch.Tensor, fresh: bool = True
    ) -> None:
        """Keep the assignments [num_cases, H] for lookup; a fresh clustering's centroids
        become the prototypes (a resumed run keeps its trained ones)."""
        if fresh:
            with torch.no_grad():
                for h, c in centroids.items():
                    self.prototypes[h].weight.copy_(c.to(self.prototypes[h].weight))
        self.pseudo_labels = labels.to(self.device, torch.long)

    # ---------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        if self.pseudo_labels.numel() == 0:
            raise RuntimeError(
                "SM3PseudoLabels has no pseudo-labels: add the KMeansPseudoLabels callback "
                "(skinssl.callbacks.KMeansPseudoLabels) to trainer.callbacks"
            )
        tokens = self.tokens(batch)
        targets = self.pseudo_labels[batch["index"]]
        pairs = [
            (self.prototypes[h](tokens[:, i]), targets[:, i]) for i, h in enumerate(self.heads)
        ]
        loss, each = mean_known_ce(pairs, self.hparams.temperature)
        n = len(targets)
        self.log_dict(
            {f"train/loss_{h}": v for h, v in zip(self.heads, each, strict=True)}, batch_size=n
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        embeddings = {h: tokens[:, i].detach() for i, h in enumerate(self.heads)}
        return {"loss": loss, "embeddings": embeddings}

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = [
            {
                "params": list(self.relation.parameters()) + list(self.prototypes.parameters()),
                "lr": hp.lr,
            },
            {"params": list(self.encoder.parameters()), "lr": hp.trunk_lr},
        ]
        return configure_adamw(self, groups)
