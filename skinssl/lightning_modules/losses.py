"""Losses as small pure functions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from skinssl.labels import HEAD_NAMES, UNKNOWN


def multi_head_cross_entropy(
    logits: dict[str, torch.Tensor], labels: torch.Tensor, heads: Sequence[str]
) -> torch.Tensor:
    """Mean over ``heads`` of each head's cross-entropy on its known labels.

    ``labels`` is [B, 8] in schema order with -1 for unknown. Heads with no known label in the
    batch are left out of the mean; with none at all the loss is a zero that keeps the graph.
    """
    losses = []
    for h in heads:
        target = labels[:, HEAD_NAMES.index(h)]
        if (target != UNKNOWN).any():
            losses.append(F.cross_entropy(logits[h].float(), target, ignore_index=UNKNOWN))
    if not losses:
        return sum(v.sum() for v in logits.values()) * 0.0
    return torch.stack(losses).mean()
