"""Summary statistics over per-case values, one definition for ``medsemgan evaluate`` and the report.

Surface distances (ASSD, MSSD, HD95) and RAVD are infinite when a mask is empty (CHAOS
conventions, ``medsemgan.evaluation.metrics``); such values cannot enter a mean. They are left out
and counted, never dropped silently: ``n_excluded`` says how many of the values were not finite
(infinite, NaN or missing).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

STAT_KEYS = ("n", "n_excluded", "mean", "median", "std", "min", "max")


def describe(values: Iterable[float | None]) -> dict:
    """``{n, n_excluded, mean, median, std, min, max}`` over the finite values.

    ``n`` counts the finite values, ``n_excluded`` the others (inf, NaN, None); ``std`` is the
    sample standard deviation (n - 1), None for fewer than two values; every statistic is None
    when no value is finite.
    """
    array = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    finite = array[np.isfinite(array)]
    stats = {"n": int(finite.size), "n_excluded": int(array.size - finite.size)}
    if finite.size:
        stats.update(mean=float(finite.mean()), median=float(np.median(finite)),
                     std=float(finite.std(ddof=1)) if finite.size > 1 else None,
                     min=float(finite.min()), max=float(finite.max()))
    else:
        stats.update(mean=None, median=None, std=None, min=None, max=None)
    return stats
