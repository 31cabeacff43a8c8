"""The level correction: each forecast multiplied by how the latest known weeks' sales compared with their forecasts.

A forecaster learns the level of its training weeks. When the level of every series moves after them at once
(markdowns that start after the training weeks, a trend the 52-week mean lags behind, the economy), its forecasts
are off by a share that lasts week after week: on the backtest of synthetic data seed 7, the next-week forecasts of
both the network and the tree peer were 3-4% low over the whole folds from November and February (bench/README.md).
So each forecast is multiplied by the ratio of actual to forecast sales of the same forecaster's next-week forecasts
in the ``RECENT_WEEKS`` latest weeks whose actuals were known when it was made, pooled over every series in dollars
(large series count as WMAE counts them), within ``LIMITS``.

Only weeks after the model was deployed count (the first week of infer's held-out window, of a backtest fold): the
weeks it was trained or selected on say little about its errors on weeks it never saw. A forecast of week d, h weeks
ahead, is made at the start of week d - 7 (h - 1) days (its origin's week) or when the model was deployed, if that is
later, and knows the actuals of the weeks before; one made before any week is known keeps its value (factor 1).
The same correction, computed from its own forecasts, is applied to the tree peer: a post-processing any forecaster
can have is not a lead of the network's.
"""

from __future__ import annotations

import numpy as np

from salesfc.band import DAYS_PER_WEEK

RECENT_WEEKS = 8
# A ratio outside these is more likely a broken week (a store closed, data missing) than a level to follow.
LIMITS = (0.8, 1.25)


def factors(target_days: np.ndarray, horizon: np.ndarray, actual: np.ndarray, forecast: np.ndarray,
            first_day: int, weeks: int = RECENT_WEEKS) -> tuple[np.ndarray, float]:
    """Each forecast's factor (forecasts of target week ``target_days``, days since 1970-01-01, ``horizon`` weeks
    ahead, of sales ``actual``; the model deployed at ``first_day``), and the factor of a forecast made after the last
    of those weeks (next week's, after a held-out window)."""
    target_days = np.asarray(target_days, dtype=np.int64)
    horizon = np.asarray(horizon, dtype=np.int64)
    actual, forecast = np.asarray(actual, dtype=np.float64), np.asarray(forecast, dtype=np.float64)
    scored = (horizon == 1) & (target_days >= first_day) & np.isfinite(actual) & np.isfinite(forecast)
    days, where = np.unique(target_days[scored], return_inverse=True)
    sold = np.bincount(where, weights=actual[scored], minlength=len(days))
    forecast_sold = np.bincount(where, weights=forecast[scored], minlength=len(days))

    def ratio(until: int) -> float:
        window = (days <= until) & (days > until - weeks * DAYS_PER_WEEK)
        expected = forecast_sold[window].sum()
        if not window.any() or expected <= 0:
            return 1.0
        return float(np.clip(sold[window].sum() / expected, *LIMITS))

    known_until = np.maximum(target_days - DAYS_PER_WEEK * (horizon - 1), first_day) - DAYS_PER_WEEK
    out = np.ones(len(target_days))
    for until in np.unique(known_until):
        out[known_until == until] = ratio(int(until))
    return out, ratio(int(days[-1])) if len(days) else 1.0
