"""Raw data: the three Kaggle-shaped tables, from the synthetic generator or from the real CSVs.

Both sources return the same ``RawData``, so everything downstream meets one shape:

* ``sales``: store, dept, date, weekly_sales, is_holiday (+ expected_sales: the generator's noiseless signal, NaN
  for real data);
* ``external``: store, date, temperature, fuel_price, markdown1-5, cpi, unemployment, is_holiday; it reaches past
  the last week of sales (what is known about the coming weeks);
* ``stores``: store, type, size.

Dates are the Fridays that end each week, as naive ``datetime64[ns]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

SALES_COLUMNS = ["store", "dept", "date", "weekly_sales", "is_holiday", "expected_sales"]
MARKDOWNS = ["markdown1", "markdown2", "markdown3", "markdown4", "markdown5"]
EXTERNAL_COLUMNS = ["store", "date", "temperature", "fuel_price", *MARKDOWNS, "cpi", "unemployment", "is_holiday"]
STORE_COLUMNS = ["store", "type", "size"]

# The four holidays Kaggle flags (its "Christmas" week is the one after Christmas Day).
HOLIDAYS = {
    "super_bowl": ["2010-02-12", "2011-02-11", "2012-02-10", "2013-02-08"],
    "labor_day": ["2010-09-10", "2011-09-09", "2012-09-07", "2013-09-06"],
    "thanksgiving": ["2010-11-26", "2011-11-25", "2012-11-23", "2013-11-29"],
    "christmas": ["2010-12-31", "2011-12-30", "2012-12-28", "2013-12-27"],
}
# Each flagged week (its Friday), named: "Thanksgiving", "Labor Day"...
HOLIDAY_NAMES = {pd.Timestamp(day): name.replace("_", " ").title() for name, days in HOLIDAYS.items() for day in days}
HOLIDAY_DATES = frozenset(HOLIDAY_NAMES)


@dataclass
class RawData:
    sales: pd.DataFrame
    external: pd.DataFrame
    stores: pd.DataFrame
    source: str

    @property
    def has_signal(self) -> bool:
        """Whether the noiseless signal is known (synthetic data), so evaluation can report the noise floor."""
        return bool(self.sales["expected_sales"].notna().any())
