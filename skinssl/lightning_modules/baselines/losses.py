"""The baselines' losses as small functions: float32 under autocast, DDP-correct, maskable.

Every function takes per-case rows of this rank. ``valid`` [N] (bool) drops cases from the
loss (cross-modal pairs whose clinical image is a stand-in). Means over cases go through
:func:`global_mean`, so that DDP's averaged gradient is the whole batch's. Where a library
implementation fits it is used: lightly's Barlow Twins loss and distributed Sinkhorn.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.loss import BarlowTwinsLoss
from lightly.loss.swav_loss import sinkhorn
from torch import Tensor

from skinssl.lightning_modules.losses import float32, gather_with_grad, global_mean


def _weight(valid: Tensor | None) -> Tensor | None:
    return None if valid is None else valid.float()


@float32
def negative_cosine(p: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """SimSiam's D(p, stopgrad(z)): minus the mean cosine similarity of paired rows."""
    per_case = -F.cosine_similarity(p, target.detach(), dim=1)
    return global_mean(per_case, _weight(valid))


@float32
def normalized_mse(p: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """BYOL's loss: mean squared distance of the L2-normalised rows (= 2 - 2 cos)."""
    diff = F.normalize(p, dim=1) - F.normalize(target.detach(), dim=1)
    return global_mean(diff.pow(2).sum(1), _weight(valid))


@float32
def info_nce(
    q: Tensor, k: Tensor, queue: Tensor, temperature: float, valid: Tensor | None = None
) -> Tensor:
    """MoCo's InfoNCE: each query's key (stop-gradient) against the queue's keys [M, D]."""
    q, k = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
    positive = (q * k).sum(1, keepdim=True)
    negative = q @ F.normalize(queue.detach(), dim=1).T
    logits = torch.cat([positive, negative], dim=1) / temperature
    target = torch.zeros(len(q), dtype=torch.long, device=q.device)
    per_case = F.cross_entropy(logits, target, reduction="none")
    return global_mean(per_case, _weight(valid))


@float32
def barlow_twins(
    a: Tensor,
    b: Tensor,
    lambda_offdiag: float = 5e-3,
    valid: Tensor | None = None,
    gather: bool = True,
) -> Tensor:
    """Barlow Twins (lightly's loss) on the whole batch of all ranks.

    Rows are gathered (with gradients) before the per-dimension standardisation, so every rank
    computes the whole-batch loss; DDP's gradient average then gives the whole batch's
    gradient. Fewer than 2 valid rows give a zero that keeps the graph.
    """
    if gather:
        a, _ = gather_with_grad(a)
        b, _ = gather_with_grad(b)
        if valid is not None:
            valid = gather_with_grad(valid.float())[0] > 0.5
    if valid is not None:
        a, b = a[valid], b[valid]
    if len(a) < 2:
        return (a.sum() + b.sum()) * 0.0
    return BarlowTwinsLoss(lambda_param=lambda_offdiag)(a, b)


@torch.no_grad()
@float32
def swav_codes(
    scores: Tensor, iterations: int = 3, epsilon: float = 0.05, gather: bool = True
) -> Tensor:
    """SwAV's soft codes of prototype scores [N, K] by Sinkhorn-Knopp (lightly's; the
    equipartition runs over all ranks' rows when ``gather``)."""
    return sinkhorn(scores.detach(), iterations, epsilon, gather_distributed=gather)


@float32
def swapped_prediction(
    scores: Tensor, codes: Tensor, temperature: float = 0.1, valid: Tensor | None = None
) -> Tensor:
    """SwAV's term: cross-entropy of softmax(scores / T) against another view's codes."""
    per_case = -(codes.detach() * F.log_softmax(scores / temperature, dim=1)).sum(1)
    return global_mean(per_case, _weight(valid))


@float32
def prototype_cross_entropy(scores: Tensor, targets: Tensor, temperature: float = 0.1) -> Tensor:
    """DeepCluster-v2's term: cross-entropy of scores / T against cluster ids (-1 = none)."""
    per_case = F.cross_entropy(scores / temperature, targets.clamp(min=0), reduction="none")
    return global_mean(per_case, (targets >= 0).float())
