"""Percentile bootstrap confidence intervals over cases."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def bootstrap_intervals(
    statistic: Callable[[np.ndarray], dict[str, float]],
    n_cases: int,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile interval of each number ``statistic`` returns, over case resamples.

    ``statistic`` maps an array of case positions (drawn with replacement, ``n_cases`` of them)
    to named numbers. A number undefined on a resample (NaN, e.g. no melanoma drawn) is left out
    of that number's interval; one undefined on every resample gets (NaN, NaN).
    """
    if resamples < 1:
        raise ValueError(f"bootstrap resamples must be >= 1, got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        for name, value in statistic(rng.integers(0, n_cases, n_cases)).items():
            draws.setdefault(name, []).append(value)
    tail = 100 * (1 - level) / 2
    intervals = {}
    for name, values in draws.items():
        v = np.asarray(values, dtype=np.float64)
        v = v[~np.isnan(v)]
        lo, hi = np.percentile(v, [tail, 100 - tail]) if len(v) else (np.nan, np.nan)
        intervals[name] = (float(lo), float(hi))
    return intervals
