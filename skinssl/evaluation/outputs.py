"""The per-case outputs of a model on an evaluation split, the input of every report."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from skinssl.labels import HEAD_NAMES


@dataclass(frozen=True)
class CaseOutputs:
    """Probabilities, labels and (optionally) label-relation attention of N cases.

    Attributes:
        index: [N] row of each case in its data source (ascending, unique).
        probs: head -> [N, K] class probabilities, for the heads the model predicts.
        labels: [N, 8] class index per head in ``HEAD_NAMES`` order, -1 where unknown.
        attention: [N, L, L] attention between the L label tokens (query row, key column),
            averaged over relation layers and attention heads; None without a relation module.
    """

    index: np.ndarray
    probs: dict[str, np.ndarray]
    labels: np.ndarray
    attention: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.index)
        shapes = {h: p.shape for h, p in self.probs.items() if p.ndim != 2 or len(p) != n}
        if shapes or self.labels.shape != (n, len(HEAD_NAMES)):
            raise ValueError(
                f"CaseOutputs of {n} cases: probs shapes {shapes} and labels "
                f"{self.labels.shape} do not fit (expected [N, K] and [N, {len(HEAD_NAMES)}])"
            )

    @property
    def heads(self) -> tuple[str, ...]:
        """The predicted heads, in schema order."""
        return tuple(h for h in HEAD_NAMES if h in self.probs)

    def __len__(self) -> int:
        return len(self.index)

    def target(self, head: str) -> np.ndarray:
        """[N] true class of ``head`` (-1 where unknown)."""
        return self.labels[:, HEAD_NAMES.index(head)]

    def take(self, rows: np.ndarray) -> CaseOutputs:
        """The cases at positions ``rows`` (repeats allowed, as in a bootstrap resample)."""
        return CaseOutputs(
            self.index[rows],
            {h: p[rows] for h, p in self.probs.items()},
            self.labels[rows],
            None if self.attention is None else self.attention[rows],
        )
