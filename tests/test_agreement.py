"""Clustering agreement: the contingency-table NMI and ARI equal scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from skinssl.evaluation.agreement import contingency, normalized_mutual_info, table_ari


def labelings() -> list[tuple[np.ndarray, np.ndarray]]:
    """Random labelings of several sizes, plus the edge cases."""
    rng = np.random.default_rng(0)
    out = []
    for n, ka, kb in [(413, 3, 3), (413, 2, 5), (50, 7, 7), (5, 2, 3), (1000, 10, 2)]:
        a = rng.integers(0, ka, n)
        out += [(a, rng.integers(0, kb, n)), (a, (a + rng.integers(0, 2, n)) % ka)]
    a = rng.integers(0, 3, 100)
    out += [
        (a, a),  # identical
        (a, (a + 1) % 3),  # renamed
        (a, a * 5 + 2),  # renamed, with unused label values
        (np.zeros(40, int), np.zeros(40, int)),  # neither splits
        (np.zeros(40, int), np.arange(40) % 2),  # one does not split
        (np.arange(30), np.arange(30)),  # all singletons
        (np.arange(30), np.arange(30) // 2),
        (np.repeat([0, 1], 20), np.tile([0, 1], 20)),  # independent
        (np.array([0]), np.array([4])),
    ]
    return out


@pytest.mark.parametrize("case", range(len(labelings())))
def test_equal_to_sklearn(case: int) -> None:
    a, b = labelings()[case]
    assert normalized_mutual_info(a, b) == pytest.approx(
        normalized_mutual_info_score(a, b), abs=1e-12
    )
    assert table_ari(contingency(a, b)) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)


def test_contingency_counts_by_label_order() -> None:
    table = contingency(np.array([0, 0, 3, 3, 3]), np.array([1, 2, 1, 1, 1]))
    np.testing.assert_array_equal(table, [[1, 1], [3, 0]])
    big = np.array([0, 10**12, 3], np.uint64)  # sized by the labels present, not their values
    assert contingency(np.arange(5000), np.arange(5000) % 2).shape == (5000, 2)
    np.testing.assert_array_equal(contingency(big, big[::-1]), [[0, 1, 0], [1, 0, 0], [0, 0, 1]])


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        (np.array([0, 1]), np.array([0]), "equally long"),
        (np.array([], int), np.array([], int), "non-empty"),
        (np.array([0.0, 1.0]), np.array([0, 1]), "integers"),
        (np.array([-1, 1]), np.array([0, 1]), ">= 0"),
    ],
)
def test_bad_labelings(a: np.ndarray, b: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalized_mutual_info(a, b)
