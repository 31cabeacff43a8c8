"""How wide the quantile band is drawn: split conformal calibration, on the validation weeks or on the latest weeks.

The band's layer learns on the training rows, where the median's errors are smaller than on weeks the network never
saw, so every band is widened: each quantile below the median moves down and each one above it up by the same
amount in units of the row's scale, the smallest that puts the band's nominal share of some out-of-sample actuals
inside (conformalized quantile regression). It only widens, so quantiles never cross.

Which actuals: after training, the validation weeks (salesfc.train.calibrate_band; the model keeps that widening).
When the forecasts of weeks whose actuals are known can be scored (infer's held-out weeks, each fold of the
backtest, and the forecast after them), each forecast is widened instead by the errors of the ``RECENT_WEEKS``
latest weeks known when it was made, forecast the same number of weeks ahead: how hard forecasting is changes with
the season (measured on the 13-week backtest of data seed 7: a band widened on the validation weeks held 75.4%,
81.9%, 75.3% and 84.2% of the next week's actuals fold by fold, one widened on the latest 4 weeks 79.6%, 79.8%,
79.2% and 81.3%; 13 latest weeks 77.9% to 82.9%; bench/README.md). A forecast is made at the start of its origin's
week, or where the origin is older than the model (the first weeks of a longer horizon), when the model was
deployed: the weeks before either are known, none after. Only weeks the model was not trained on count; a forecast
with none of them known at its horizon keeps the validation weeks' widening.
"""

from __future__ import annotations

import math

import numpy as np

# The latest weeks whose errors set the band (bench/README.md: 4 held the nominal share best of 4, 8 and 13).
RECENT_WEEKS = 4
DAYS_PER_WEEK = 7


def conformal_level(rows: int, nominal: float) -> float:
    """The quantile of ``rows`` calibration scores that covers ``nominal`` of new ones (the finite-sample correction)."""
    return min(1.0, math.ceil((rows + 1) * nominal) / rows)


def outside(low: np.ndarray, high: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """How far each actual falls outside its band (> 0 outside, <= 0 inside): the conformal score."""
    return np.maximum(low - actual, actual - high)


def recent_widening(score_days: np.ndarray, scores: np.ndarray, known_until: np.ndarray, nominal: float,
                    fallback: float, weeks: int | None = None) -> np.ndarray:
    """The widening of each forecast (``known_until``: the last week whose actual it may use, days since
    1970-01-01) from the scores of forecasts of the same horizon (``scores`` of target weeks ``score_days``) in the
    ``weeks`` (RECENT_WEEKS) latest weeks up to it; ``fallback`` where none is known."""
    weeks = RECENT_WEEKS if weeks is None else weeks
    widen = np.full(len(known_until), float(fallback))
    for until in np.unique(known_until):
        window = (score_days <= until) & (score_days > until - weeks * DAYS_PER_WEEK)
        if window.any():
            chosen = scores[window]
            widen[known_until == until] = max(0.0, float(np.quantile(chosen, conformal_level(len(chosen), nominal))))
    return widen
