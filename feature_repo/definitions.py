"""Sales demand forecasting features: the first file to read.

What we forecast: next week's sales of every department of every store (a "series"). Two tables feed the store,
both written by `salesfc prep`, one row per week:

* sales history, one row per store department and week t: lags and rolling statistics of weekly sales, and the
  year over year of its store (all its departments' recent weeks against the same weeks a year before). Every
  value in the row for week t is computed from weeks *before* t, so a row never reads the sales it is used to
  predict. Lags count calendar weeks (a week a series did not report stays missing; it is not skipped over).
* store context, one row per store and week t: calendar and holiday, weather, fuel price, CPI, unemployment,
  markdowns (promotions), store type and size: what is known about week t before it ends.

Two on-demand views derive more features at read time, from those lagged inputs only.

The sales we train on (the target) are not a feature: they travel with the entity rows (see `salesfc.tables`).

`salesfc prep` applies these definitions (it is our `feast apply`) with the batch sources of the offline store
the deployment uses: parquet files for DuckDB, tables for PostgreSQL.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, String

from salesfc.tables import batch_source

# Rows are weekly and every row is stamped with its own week, so a point-in-time join must find the row of the very
# week asked for: a shorter time-to-live than a week means a missing row stays missing instead of being filled with
# the previous week's values.
WEEKLY = timedelta(days=6)

store = Entity(
    name="store",
    join_keys=["store"],
    value_type=ValueType.INT64,
    description="A store (1-45 in the Walmart data).",
)

dept = Entity(
    name="dept",
    # One key, not (store, dept): Feast's PostgreSQL offline store builds its row id by concatenating join keys with
    # no separator, so (1, 12) and (11, 2) would collide. salesfc.tables.store_dept() makes the key.
    join_keys=["store_dept"],
    value_type=ValueType.INT64,
    description="A department of one store: the series we forecast. Key: store * 1000 + department number.",
)

sales_history_features = FeatureView(
    name="sales_history_features",
    entities=[dept],
    ttl=WEEKLY,
    schema=[
        Field(name="sales_lag_1", dtype=Float64, description="Sales 1 week before (missing if not reported)."),
        Field(name="sales_lag_2", dtype=Float64),
        Field(name="sales_lag_4", dtype=Float64),
        Field(name="sales_lag_8", dtype=Float64),
        Field(name="sales_lag_51", dtype=Float64, description="The week after the same week last year."),
        Field(name="sales_lag_52", dtype=Float64, description="Same week last year; missing in the first year."),
        Field(name="sales_lag_53", dtype=Float64, description="The week before the same week last year."),
        Field(name="sales_rolling_mean_4", dtype=Float64, description="Mean of the 4 weeks before."),
        Field(name="sales_rolling_mean_8", dtype=Float64),
        Field(name="sales_rolling_mean_12", dtype=Float64),
        Field(name="sales_rolling_mean_52", dtype=Float64),
        Field(name="sales_rolling_std_4", dtype=Float64, description="Standard deviation of the 4 weeks before."),
        Field(name="sales_rolling_std_8", dtype=Float64),
        Field(name="sales_rolling_std_12", dtype=Float64),
        Field(name="sales_rolling_std_52", dtype=Float64),
        Field(name="sales_year_ago_mean_4", dtype=Float64,
              description="Mean of the 4 weeks before the same week last year (its level before last year's lift)."),
        Field(name="weeks_of_history", dtype=Int64, description="Weeks this series reported before this one."),
        Field(name="store_sales_yoy_4", dtype=Float64,
              description="The store's sales of the 4 weeks before over the same weeks a year earlier (its "
                          "departments with both, pooled); missing in the first year."),
        Field(name="store_sales_yoy_12", dtype=Float64, description="The same over 12 weeks."),
    ],
    source=batch_source("sales_history"),
    online=True,
    description="Lagged sales statistics per store department; week t's row uses weeks before t only.",
)

store_external_features = FeatureView(
    name="store_external_features",
    entities=[store],
    ttl=WEEKLY,
    schema=[
        Field(name="is_holiday", dtype=Int64, description="Super Bowl, Labor Day, Thanksgiving or Christmas week."),
        Field(name="holiday_code", dtype=Int64,
              description="Which holiday: 0 none, 1 Super Bowl, 2 Labor Day, 3 Thanksgiving, 4 Christmas."),
        Field(name="weeks_to_thanksgiving", dtype=Float64,
              description="Weeks from the week's end to the nearest Thanksgiving (negative: after it), within 8."),
        Field(name="weeks_to_christmas", dtype=Float64, description="The same for Christmas Day."),
        Field(name="week_of_year", dtype=Int64),
        Field(name="month", dtype=Int64),
        Field(name="temperature", dtype=Float64, description="Average temperature in the region, Fahrenheit."),
        Field(name="fuel_price", dtype=Float64),
        Field(name="cpi", dtype=Float64),
        Field(name="unemployment", dtype=Float64),
        Field(name="markdown1", dtype=Float64, description="Promotional markdown; missing before Nov 2011."),
        Field(name="markdown2", dtype=Float64),
        Field(name="markdown3", dtype=Float64),
        Field(name="markdown4", dtype=Float64),
        Field(name="markdown5", dtype=Float64),
        Field(name="total_markdown", dtype=Float64, description="Sum of the markdowns reported (0 when none)."),
        Field(name="has_markdown", dtype=Int64),
        Field(name="store_type", dtype=String, description="A, B or C."),
        Field(name="store_size", dtype=Int64, description="Square feet."),
    ],
    source=batch_source("store_context"),
    online=True,
    description="What is known about a store's week: calendar, holidays, weather, economy, promotions.",
)


# On-demand views run in python mode on whole columns, vectorized with numpy: an online read of one series with both
# views costs under 1 ms this way, against about 10 ms for pandas-mode views. Feast hands them lists (None where
# missing); salesfc's training reads hand them numpy arrays (NaN where missing; feature_store.OnDemandPlan, which
# spares Feast turning the whole joined table into lists), so each function takes either. They must be
# self-contained: Feast stores the function itself in the registry.
@on_demand_feature_view(
    sources=[sales_history_features, store_external_features],
    schema=[
        Field(name="temperature_normalized", dtype=Float64),
        Field(name="holiday_markdown_interaction", dtype=Float64),
        Field(name="markdown_momentum", dtype=Float64),
        Field(name="seasonal_sine", dtype=Float64),
        Field(name="seasonal_cosine", dtype=Float64),
    ],
    mode="python",
)
def feature_transformations(inputs: dict) -> dict:
    """Scaled weather, promotion intensity against last week's sales, and a cyclical encoding of the week."""
    import numpy as np

    def column(name):
        return np.array(inputs[name], dtype=np.float64)  # None becomes NaN

    def values(array):
        return np.where(np.isnan(array), None, array).tolist()  # and back: missing stays missing

    markdown, angle = column("total_markdown"), 2 * np.pi * column("week_of_year") / 52.0
    return {
        "temperature_normalized": values((column("temperature") - 5.0) / 95.0),
        "holiday_markdown_interaction": values(column("is_holiday") * markdown),
        "markdown_momentum": values(markdown / (np.abs(column("sales_lag_1")) + 1.0)),
        "seasonal_sine": values(np.sin(angle)),
        "seasonal_cosine": values(np.cos(angle)),
    }


@on_demand_feature_view(
    sources=[sales_history_features],
    schema=[
        Field(name="sales_velocity", dtype=Float64),
        Field(name="sales_acceleration", dtype=Float64),
        Field(name="demand_stability_score", dtype=Float64),
        Field(name="seasonal_index", dtype=Float64),
    ],
    mode="python",
)
def temporal_transformations(inputs: dict) -> dict:
    """Growth, change of growth, stability of recent sales and last year's lift of this week, from lags only (never
    the week being predicted)."""
    import numpy as np

    def column(name):
        return np.array(inputs[name], dtype=np.float64)

    def values(array):
        return np.where(np.isnan(array), None, array).tolist()

    lag_1, lag_2, lag_4 = column("sales_lag_1"), column("sales_lag_2"), column("sales_lag_4")
    lag_52, year_ago_mean_4 = column("sales_lag_52"), column("sales_year_ago_mean_4")
    mean_4, std_4 = column("sales_rolling_mean_4"), column("sales_rolling_std_4")
    return {
        # Week-over-week growth, relative to the earlier week (+1 keeps zero-sales weeks finite).
        "sales_velocity": values((lag_1 - lag_2) / (np.abs(lag_2) + 1.0)),
        # Last week's change minus the average weekly change over the two weeks before it.
        "sales_acceleration": values(((lag_1 - lag_2) - (lag_2 - lag_4) / 2.0) / (np.abs(mean_4) + 1.0)),
        # 1 - coefficient of variation of the last 4 weeks: 1 is perfectly steady demand.
        "demand_stability_score": values(1.0 - std_4 / (np.abs(mean_4) + 1.0)),
        # Last year's lift of this week over the 4 weeks before it (1: no lift); holidays included.
        "seasonal_index": values(np.clip((lag_52 + 1.0) / (np.abs(year_ago_mean_4) + 1.0), -5.0, 10.0)),
    }


demand_forecasting_service = FeatureService(
    name="demand_forecasting_service",
    features=[
        sales_history_features,
        store_external_features,
        feature_transformations,
        temporal_transformations,
    ],
    description="Everything the forecasting model reads, for training (offline) and inference (online).",
)
