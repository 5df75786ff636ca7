"""Agreement of two labelings of the same cases: normalised mutual information and the adjusted
Rand index, computed from their contingency table.

Same definitions as scikit-learn's ``normalized_mutual_info_score`` (arithmetic mean of the
entropies) and ``adjusted_rand_score``, without their per-call input validation, which costs
about 1 ms a call and made the k-means statistics cost more than the k-means itself.
"""

from __future__ import annotations

import numpy as np


def contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Counts [i, j] of the cases with the i-th smallest label in ``a`` and the j-th smallest
    in ``b``; ``a`` and ``b`` are equally long 1-D arrays of non-negative integers."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"two equally long, non-empty 1-D labelings needed; got {a.shape}, {b.shape}"
        )
    if not (np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer)):
        raise ValueError(f"labels must be integers; got {a.dtype} and {b.dtype}")
    if a.min() < 0 or b.min() < 0:
        raise ValueError("labels must be >= 0 (drop the unknown ones first)")
    rows, cols = (codes(x) for x in (a, b))
    shape = (int(rows.max()) + 1, int(cols.max()) + 1)
    table = np.bincount(rows * shape[1] + cols, minlength=shape[0] * shape[1]).reshape(shape)
    return table[table.any(1)][:, table.any(0)]


def codes(labels: np.ndarray) -> np.ndarray:
    """Non-negative integer ``labels`` as small int64 codes in the same order: as they are when
    all are below 1024 (cluster and class labels; the table stays small), else their ranks."""
    if labels.max() < 1024:
        return labels.astype(np.int64)
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def entropy(counts: np.ndarray) -> float:
    """Entropy (nats) of the distribution given by positive ``counts``."""
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def normalized_mutual_info(a: np.ndarray, b: np.ndarray) -> float:
    """Mutual information of ``a`` and ``b`` over the mean of their entropies; 1.0 when neither
    splits the cases, 0.0 when they share no information."""
    return table_nmi(contingency(a, b))


def table_nmi(table: np.ndarray) -> float:
    """:func:`normalized_mutual_info` from the labelings' :func:`contingency` table."""
    if table.shape == (1, 1):
        return 1.0
    n = table.sum()
    rows, cols = table.sum(1), table.sum(0)
    i, j = np.nonzero(table)
    joint = table[i, j] / n
    mi = float((joint * np.log(joint * n * n / (rows[i] * cols[j]))).sum())
    if mi <= 1e-12:  # rounding error around independence
        return 0.0
    return mi / ((entropy(rows) + entropy(cols)) / 2)


def table_ari(table: np.ndarray) -> float:
    """The Rand index of two labelings adjusted for chance, from their :func:`contingency`
    table: 1.0 for the same partition, about 0.0 for independent ones (may be negative)."""

    def pairs(counts: np.ndarray) -> float:
        return float((counts * (counts - 1)).sum() / 2)

    both, in_a, in_b = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    if both == in_a == in_b:  # the same partition (incl. one cluster or all singletons)
        return 1.0
    n = table.sum()
    expected = in_a * in_b / (n * (n - 1) / 2)
    return (both - expected) / ((in_a + in_b) / 2 - expected)
