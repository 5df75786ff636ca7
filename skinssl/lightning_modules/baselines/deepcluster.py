"""DeepCluster-v2 (Caron et al., 2020): predict k-means cluster ids of the cases' embeddings.

Per modality: trunk -> projector (lightly's SwAV head) -> L2-normalised embedding, scored
against the modality's k-means centroids. Every epoch the ``KMeansPseudoLabels`` callback
(features: a clean eval-mode pass) clusters each modality's embeddings of the training split
and hands the centroids and assignments over through the clustering protocol
(``cluster_sizes``/``cluster_embeddings``/``set_clusters``); the loss is the cross-entropy of
each view's scores / T against its case's cluster id. The prototypes are the centroids and are
not trained (the released DeepCluster-v2 recipe freezes them for all its iterations). One
clustering per modality (the callback's k-means seed is shared by its heads, so several
clusterings of one modality with the same K would coincide).

No cross-modal term: the prototypes are centroids of one modality's embedding space, and
nothing in DeepCluster-v2 puts the two modalities in a shared space where one modality's cluster
ids could be predicted from the other's embedding (SwAV, whose prototypes are shared and whose
codes are online, is the clustering method with a natural cross-modal term).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from lightly.models.modules.heads import SwaVProjectionHead
from torch import Tensor

from skinssl.lightning_modules.baselines.base import Pretraining
from skinssl.lightning_modules.baselines.losses import prototype_cross_entropy


class DeepClusterV2(Pretraining):
    """DeepCluster-v2, single- or multi-modal; needs the ``KMeansPseudoLabels`` callback.

    Args:
        proj_hidden: hidden width of the projector (paper: 2048).
        proj_dim: embedding size (paper: 128).
        num_clusters: k-means clusters per modality (paper: 3000 for ImageNet; at most the
            number of training cases).
        temperature: softmax temperature of the scores (paper: 0.1).
        **kwargs: the shared arguments of :class:`Pretraining` (modality, trunks, optimiser).
    """

    has_cross: ClassVar[bool] = False
    per_view_reference: ClassVar[bool] = False  # its reference code: both views in one batch

    def __init__(
        self,
        proj_hidden: int = 2048,
        proj_dim: int = 128,
        num_clusters: int = 30,
        temperature: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(cross_weight=0.0, **kwargs)
        if num_clusters < 2:
            raise ValueError(f"num_clusters must be >= 2, got {num_clusters}")
        self.projectors = self.per_modality(
            lambda: SwaVProjectionHead(self.feature_dim, proj_hidden, proj_dim)
        )
        # set by the callback (it keeps them in its own resumable state)
        empty = torch.zeros(len(self.modalities), num_clusters, proj_dim)
        self.register_buffer("centroids", empty, persistent=False)
        self.register_buffer("assignments", torch.empty(0, 0, dtype=torch.long), persistent=False)

    def embed(self, modality: str, images: Tensor) -> Tensor:
        return F.normalize(self.embedder(modality)(images), dim=1)

    # ---------------------------------------------------------- clustering protocol
    def cluster_sizes(self) -> dict[str, int]:
        return {m: self.hparams.num_clusters for m in self.modalities}

    def cluster_embeddings(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        return {m: self.embed(m, batch[m]) for m in self.modalities}

    def set_clusters(
        self, centroids: dict[str, Tensor], labels: Tensor, fresh: bool = True
    ) -> None:
        """The centroids are the (untrained) prototypes: set also on a resume (``fresh``)."""
        self.centroids = torch.stack([centroids[m] for m in self.modalities]).to(self.centroids)
        self.assignments = labels.to(self.device, torch.long)

    # ---------------------------------------------------------------- training
    def loss_terms(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Per modality: both views predict the case's cluster id (looked up by ``index``)."""
        if self.assignments.numel() == 0:
            raise RuntimeError(
                "DeepClusterV2 has no cluster assignments: add the KMeansPseudoLabels callback "
                "(skinssl.callbacks.KMeansPseudoLabels) to trainer.callbacks"
            )
        targets = self.assignments[batch["index"]]
        terms = {}
        for i, m in enumerate(self.modalities):
            embedded = self.each_view(lambda v, m=m: self.embed(m, v), self.two_views(batch, m))
            scores = embedded @ self.centroids[i].T
            terms[f"intra_{m}"] = prototype_cross_entropy(
                scores, targets[:, i].repeat(2), self.hparams.temperature
            )
        return terms
