"""SM3's label-relation-aware module: one token per label, self-attention across the tokens.

The fused feature of both modalities goes through one linear projector per label, giving one
token per label; post-LayerNorm transformer layers (as ``nn.TransformerEncoderLayer``) then
attend across the label tokens of the same case. Their attention maps (label x label) are what
the paper visualises as relations between criteria and with the diagnosis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Relation = Literal["transformer", "none"]
HPARAMS = {
    "embed_dim": "dim", "relation": "relation", "relation_layers": "layers",
    "relation_heads": "nhead", "relation_ffn": "ffn", "relation_dropout": "dropout",
    "label_embedding": "label_embedding", "input_norm": "input_norm",
}  # fmt: skip
"""The hyper-parameters of a module that builds :class:`LabelTokens` (same names everywhere),
and the :class:`LabelTokens` argument each one is."""


class RelationLayer(nn.Module):
    """``nn.TransformerEncoderLayer`` (post-norm, ReLU) that also returns its attention map."""

    def __init__(self, dim: int, nhead: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, nhead, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn, dim)
        )
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens [B, L, D] -> (tokens [B, L, D], attention [B, L, L] averaged over heads)."""
        out, weights = self.attn(x, x, x, need_weights=True, average_attn_weights=True)
        x = self.norm1(x + self.drop1(out))
        x = self.norm2(x + self.drop2(self.ffn(x)))
        return x, weights


class LabelTokens(nn.Module):
    """Per-label projectors + the label-relation module, keyed by head name.

    Parameters are per head name (projectors, optional label embeddings), so a model with other
    heads can load the ones it shares. ``relation="none"`` skips attention (the ablation).

    Args:
        in_dim: size of the fused feature.
        heads: head names, one token each, in this order.
        dim: token size.
        relation: ``transformer`` or ``none``.
        layers: number of relation layers.
        nhead: attention heads per layer.
        ffn: feed-forward width.
        dropout: dropout in the relation layers.
        label_embedding: add a learned per-label embedding to each token.
        input_norm: standardise the fused feature (BatchNorm) before the projectors. Pooled
            ReLU features share a large mean, which otherwise makes all tokens nearly parallel.
    """

    def __init__(
        self,
        in_dim: int,
        heads: Sequence[str],
        dim: int = 512,
        relation: Relation = "transformer",
        layers: int = 1,
        nhead: int = 1,
        ffn: int = 128,
        dropout: float = 0.1,
        label_embedding: bool = False,
        input_norm: bool = False,
    ) -> None:
        super().__init__()
        self.heads = list(heads)
        self.input_norm = nn.BatchNorm1d(in_dim) if input_norm else nn.Identity()
        self.projectors = nn.ModuleDict({h: nn.Linear(in_dim, dim) for h in self.heads})
        self.embeddings = (
            nn.ParameterDict({h: nn.Parameter(torch.zeros(dim)) for h in self.heads})
            if label_embedding
            else None
        )
        n_layers = layers if relation == "transformer" else 0
        self.layers = nn.ModuleList(
            RelationLayer(dim, nhead, ffn, dropout) for _ in range(n_layers)
        )

    @classmethod
    def from_hparams(cls, in_dim: int, heads: Sequence[str], hp: Mapping) -> LabelTokens:
        """Built from a module's hyper-parameters named as in ``HPARAMS``."""
        return cls(in_dim, heads, **{arg: hp[name] for name, arg in HPARAMS.items()})

    def forward_with_attention(
        self, fused: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Fused feature [B, F] -> (tokens [B, L, D], one attention map [B, L, L] per layer)."""
        fused = self.input_norm(fused)
        tokens = torch.stack([self.projectors[h](fused) for h in self.heads], dim=1)
        if self.embeddings is not None:
            tokens = tokens + torch.stack([self.embeddings[h] for h in self.heads])
        maps = []
        for layer in self.layers:
            tokens, weights = layer(tokens)
            maps.append(weights)
        return tokens, maps

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(fused)[0]


def normalize_tokens(tokens: torch.Tensor, enabled: bool) -> torch.Tensor:
    """L2-normalise tokens along the feature axis when ``enabled`` (SM3's ``--l2-norm``)."""
    return F.normalize(tokens, dim=-1) if enabled else tokens
