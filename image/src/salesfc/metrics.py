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


def quantile_name(q: float) -> str:
    """0.1 -> 'p10', 0.975 -> 'p97.5': how a quantile names its columns and metrics."""
    return f"p{q * 100:g}"


def quantile_of(name: str) -> float:
    return float(name.removeprefix("p")) / 100


def intervals(actual, bands: dict, holiday) -> dict:
    """How honest a set of quantile forecasts ({q: dollars}) is: the share of actuals between the lowest and the
    highest quantile (the band's nominal share is their difference), in all, holiday and other weeks; and the
    pinball loss of each quantile in dollars, holiday weeks weighted like WMAE (for the median it is half the
    WMAE)."""
    actual = np.asarray(actual, dtype=np.float64)
    holiday = np.asarray(holiday) > 0
    levels = sorted(bands)
    low, high = np.asarray(bands[levels[0]], dtype=np.float64), np.asarray(bands[levels[-1]], dtype=np.float64)
    inside = (actual >= low) & (actual <= high)
    weight = np.where(holiday, HOLIDAY_WEIGHT, 1.0)

    def share(mask: np.ndarray) -> float | None:
        return float(inside[mask].mean()) if mask.any() else None

    pinball = {}
    for q in levels:
        error = actual - np.asarray(bands[q], dtype=np.float64)
        pinball[quantile_name(q)] = float((weight * np.maximum(q * error, (q - 1) * error)).sum() / weight.sum())
    return {"band": f"{quantile_name(levels[0])}-{quantile_name(levels[-1])}",
            "nominal": round(levels[-1] - levels[0], 6), "coverage": share(np.ones_like(holiday)),
            "coverage_holiday": share(holiday), "coverage_other": share(~holiday), "pinball": pinball}
