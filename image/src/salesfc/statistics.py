"""Statistics of data spread over ranks, equal to the same statistic of the whole set.

Each training process holds only its own shard of the series, yet the preprocessing must be the one a single
process would fit on all of them: the same means and spreads, the same vocabularies, the same medians. Sums and
counts are all-reduced. Medians and quantiles are exact order statistics found by bisection on the bits of the
float64 values (monotone once mapped to unsigned integers): 64 rounds of one all-reduce of counts each, memory
that grows with the shard, and the same value a sort of the whole set would give. In a world of one every
collective is a no-op and these are the plain numpy statistics.
"""

from __future__ import annotations

import math

import numpy as np

from salesfc.distributed import Context

_SIGN = np.uint64(1 << 63)
_ALL = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


def _keys(values: np.ndarray) -> np.ndarray:
    """float64 -> uint64 in the same order (negatives: every bit flipped; the rest: the sign bit set)."""
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
    return np.where((bits & _SIGN) != 0, bits ^ _ALL, bits | _SIGN)


def _values(keys: np.ndarray) -> np.ndarray:
    keys = np.asarray(keys, dtype=np.uint64)
    return np.where((keys & _SIGN) != 0, keys ^ _SIGN, keys ^ _ALL).view(np.float64)


def order_statistics(context: Context, values: np.ndarray, groups: np.ndarray, n_groups: int,
                     ks: np.ndarray) -> np.ndarray:
    """For each group g and each column j of ``ks``, the ks[g, j]-th smallest (1-based) of the group's values over
    every rank. ``values`` must be free of NaN; ``ks`` must be the same on every rank and within each group's
    count over all ranks (a group whose k is 0 gets NaN)."""
    ks = np.asarray(ks, dtype=np.int64).reshape(n_groups, -1)
    keys = _keys(values)
    order = np.lexsort((keys, groups))
    keys, groups = keys[order], np.asarray(groups)[order]
    bounds = np.searchsorted(groups, np.arange(n_groups + 1))
    slices = [keys[bounds[g]:bounds[g + 1]] for g in range(n_groups)]
    lo = np.zeros(ks.shape, dtype=np.uint64)
    hi = np.full(ks.shape, _ALL, dtype=np.uint64)
    # Invariant: the answer key t (the smallest with count(keys <= t) >= k) lies in [lo, hi].
    for _ in range(64):
        mid = lo + (hi - lo) // np.uint64(2)
        counts = np.array([[np.searchsorted(slices[g], mid[g, j], side="right") for j in range(ks.shape[1])]
                           for g in range(n_groups)], dtype=np.float64)
        enough = context.sum_array(counts) >= ks
        hi = np.where(enough, mid, hi)
        lo = np.where(enough, lo, mid + np.uint64(1))
        if (lo == hi).all():
            break
    return np.where(ks > 0, _values(lo), np.nan)


def counts(context: Context, groups: np.ndarray, n_groups: int) -> np.ndarray:
    return context.sum_array(np.bincount(np.asarray(groups, dtype=np.int64), minlength=n_groups)).astype(np.int64)


def medians(context: Context, values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Each group's median over every rank (the mean of the two middle values for an even count, as pandas and
    numpy give it; NaN for a group with no value)."""
    n = counts(context, groups, n_groups)
    ks = np.stack([(n + 1) // 2, n // 2 + 1], axis=1)
    ks[:, 1] = np.where(n % 2 == 1, ks[:, 0], ks[:, 1])
    middle = order_statistics(context, values, groups, n_groups, np.where(n[:, None] > 0, ks, 0))
    return (middle[:, 0] + middle[:, 1]) / 2


def quantile(context: Context, values: np.ndarray, q: float) -> float:
    """The q-quantile of the values over every rank, interpolated linearly between order statistics as
    ``torch.quantile`` and ``numpy.quantile`` do by default."""
    groups = np.zeros(len(values), dtype=np.int64)
    n = int(counts(context, groups, 1)[0])
    if n == 0:
        raise ValueError("quantile of no values")
    position = q * (n - 1)
    below, above = math.floor(position), math.ceil(position)
    a, b = order_statistics(context, values, groups, 1, np.array([[below + 1, above + 1]]))[0]
    return float(a + (b - a) * (position - below))


def mean_std(context: Context, values: np.ndarray) -> tuple[float, float, int]:
    """Mean, population standard deviation and count of the finite values over every rank (two passes, so the
    spread is as exact as numpy's on the whole set)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    count, total = context.sum_array([len(values), values.sum()])
    if count == 0:
        return math.nan, 0.0, 0
    mean = total / count
    squares = context.sum_array([np.square(values - mean).sum()])[0]
    return float(mean), float(math.sqrt(squares / count)), int(count)


def any_true(context: Context, flag: bool) -> bool:
    return bool(context.sum_array([1.0 if flag else 0.0])[0] > 0)


def union(context: Context, items) -> list:
    """The sorted union of every rank's items (ints or strings: what JSON carries)."""
    return sorted({item for part in context.all_gather_json(sorted(set(items))) for item in part})
