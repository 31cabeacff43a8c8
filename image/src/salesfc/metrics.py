"""Forecast error measures, all in dollars of weekly sales.

* MAE, RMSE, R^2: the usual.
* WMAE: the Kaggle competition's measure, MAE with holiday weeks weighted 5 to 1.
* MAPE: over rows whose actual sales are at least $1,000 only; plain MAPE explodes on departments selling a few
  dollars (or cents, or negative amounts after returns). ``mape_rows_excluded`` says how many rows that leaves out.
"""

from __future__ import annotations

import numpy as np

from salesfc.dataset import HOLIDAY_WEIGHT

MAPE_MIN_ACTUAL = 1_000.0


def sums(actual: np.ndarray, predicted: np.ndarray, holiday: np.ndarray) -> np.ndarray:
    """Additive pieces of every measure, so ranks can add theirs before the ratios are taken (see finish)."""
    actual = np.asarray(actual, dtype=np.float64)
    error = np.asarray(predicted, dtype=np.float64) - actual
    weight = np.where(np.asarray(holiday) > 0, HOLIDAY_WEIGHT, 1.0)
    big = np.abs(actual) >= MAPE_MIN_ACTUAL
    return np.array([
        len(actual),                                       # 0 rows
        np.abs(error).sum(),                               # 1 absolute error
        (error ** 2).sum(),                                # 2 squared error
        (weight * np.abs(error)).sum(),                    # 3 weighted absolute error
        weight.sum(),                                      # 4 weights
        (np.abs(error[big]) / np.abs(actual[big])).sum(),  # 5 relative error of big rows
        big.sum(),                                         # 6 big rows
        actual.sum(),                                      # 7 sum of actuals
        (actual ** 2).sum(),                               # 8 sum of squared actuals
    ])


def finish(total: np.ndarray) -> dict:
    n = total[0]
    if n == 0:
        return {"n_rows": 0, "mae": None, "rmse": None, "wmae": None, "mape": None, "r2": None,
                "mape_rows_excluded": 0}
    variance = total[8] - total[7] ** 2 / n
    return {
        "n_rows": int(n),
        "mae": float(total[1] / n),
        "rmse": float(np.sqrt(total[2] / n)),
        "wmae": float(total[3] / total[4]),
        "mape": float(100 * total[5] / total[6]) if total[6] else None,
        "r2": float(1 - total[2] / variance) if variance > 0 else None,
        "mape_rows_excluded": int(n - total[6]),
    }


def evaluate(actual, predicted, holiday) -> dict:
    return finish(sums(actual, predicted, holiday))
