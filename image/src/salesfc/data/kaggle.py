"""Load and validate the Kaggle "Walmart Recruiting - Store Sales Forecasting" CSVs.

Accepts a folder holding ``train.csv``, ``features.csv`` and ``stores.csv``, each plain or zipped (``train.csv.zip``),
or the competition's single download zip. Line endings may be LF, CRLF or CR alone. Every problem is reported as
one error naming the file, the column and the row (1-based, counting the header as row 1, as an editor shows it).
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from salesfc.data import MARKDOWNS, RawData
from salesfc.errors import UserError

FILES = {
    "train.csv": {"Store": "int", "Dept": "int", "Date": "date", "Weekly_Sales": "number", "IsHoliday": "bool"},
    "features.csv": {"Store": "int", "Date": "date", "Temperature": "number?", "Fuel_Price": "number?",
                     "MarkDown1": "number?", "MarkDown2": "number?", "MarkDown3": "number?",
                     "MarkDown4": "number?", "MarkDown5": "number?", "CPI": "number?", "Unemployment": "number?",
                     "IsHoliday": "bool"},
    "stores.csv": {"Store": "int", "Type": "text", "Size": "int"},
}
MISSING = {"", "NA", "NaN", "nan", "NULL", "null"}


def _read_bytes(folder: Path, name: str) -> bytes:
    try:
        return _find_bytes(folder, name)
    except zipfile.BadZipFile as err:
        raise UserError(f"{folder}: a zip file that should hold {name} is damaged ({err}); download it again"
                        ) from None


def _find_bytes(folder: Path, name: str) -> bytes:
    plain, zipped = folder / name, folder / f"{name}.zip"
    if plain.is_file():
        return plain.read_bytes()
    if zipped.is_file():
        with zipfile.ZipFile(zipped) as archive:
            members = [m for m in archive.namelist() if Path(m).name == name]
            if not members:
                raise UserError(f"{zipped}: holds no {name}")
            return archive.read(members[0])
    for bundle in sorted(folder.glob("*.zip")):  # the competition's all-in-one download
        with zipfile.ZipFile(bundle) as archive:
            for member in archive.namelist():
                if Path(member).name == name:
                    return archive.read(member)
                if Path(member).name == f"{name}.zip":
                    with zipfile.ZipFile(io.BytesIO(archive.read(member))) as inner:
                        return inner.read(inner.namelist()[0])
    raise UserError(f"{folder}: no {name} (nor {name}.zip, nor a zip holding it); download the competition data "
                    "from Kaggle and point --kaggle-dir at the folder")


def _parse(name: str, data: bytes) -> pd.DataFrame:
    text = data.decode("utf-8-sig", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    expected = FILES[name]
    if not text.strip():
        raise UserError(f"{name}: the file is empty; it must start with the header {','.join(expected)} (download "
                        "it again: an interrupted download leaves an empty file)")
    try:
        # header=None: the header is read as a row, so it fixes the number of fields and a longer row is an error.
        # With a header row pandas would take a longer first row's extra field as an index and shift every column.
        cells = pd.read_csv(io.StringIO(text), header=None, dtype=str, keep_default_na=False)
    except pd.errors.ParserError as err:
        raise UserError(_parser_error(name, str(err))) from None
    frame = cells.iloc[1:].reset_index(drop=True)
    frame.columns = list(cells.iloc[0])
    missing = [column for column in expected if column not in frame.columns]
    if missing:
        raise UserError(f"{name}: missing column(s) {', '.join(missing)}; found {', '.join(frame.columns)}")
    if frame.empty:
        raise UserError(f"{name}: has a header but no rows")
    out = {}
    for column, kind in expected.items():
        out[column] = _convert(name, column, kind, frame[column].str.strip())
    return pd.DataFrame(out)


def _parser_error(name: str, message: str) -> str:
    """pandas' tokenizer error as one line in our words (its own message ends in a newline)."""
    extra = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", message)
    if extra:
        expected, line, saw = extra.groups()
        # pandas counts the header as line 1, as this module's rows do.
        return (f"{name}, row {line}: {saw} fields where the header has {expected}; a comma inside a value (a "
                "decimal comma, a thousands separator) must be removed or the value quoted")
    if "EOF inside string" in message:
        row = re.search(r"row (\d+)", message)
        where = f", row {int(row.group(1)) + 1}" if row else ""
        return f"{name}{where}: a quote (\") opens a value that never closes; remove it or close it"
    return f"{name}: not a readable CSV ({' '.join(message.split())})"


def _convert(name: str, column: str, kind: str, values: pd.Series) -> pd.Series:
    optional = kind.endswith("?")
    kind = kind.rstrip("?")
    blank = values.isin(MISSING)
    if kind == "bool":
        upper = values.str.upper()
        bad = ~upper.isin({"TRUE", "FALSE"})
        _reject(name, column, values, bad, "is not TRUE or FALSE")
        return upper == "TRUE"
    if kind == "text":
        _reject(name, column, values, blank, "is empty")
        return values
    if kind == "date":
        parsed = pd.to_datetime(values, format="%Y-%m-%d", errors="coerce")
        _reject(name, column, values, parsed.isna(), "is not a date like 2010-02-05")
        return parsed
    numbers = pd.to_numeric(values.where(~blank), errors="coerce")
    bad = numbers.isna() & ~blank
    _reject(name, column, values, bad, "is not a number")
    if not optional:
        _reject(name, column, values, blank, "is missing")
    if kind == "int":
        _reject(name, column, values, numbers.notna() & (numbers != np.floor(numbers)), "is not a whole number")
        return numbers.astype("int64")
    return numbers.astype("float64")


def _reject(name: str, column: str, values: pd.Series, bad: pd.Series, why: str) -> None:
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        count = int(bad.sum())
        more = f" ({count - 1} more rows like it)" if count > 1 else ""
        raise UserError(f"{name}, column {column}, row {first + 2}: {values.iloc[first]!r} {why}{more}")


def _check_weekly(name: str, frame: pd.DataFrame) -> None:
    weekdays = frame["Date"].dt.dayofweek
    if weekdays.nunique() > 1:
        usual = weekdays.mode().iloc[0]
        first = int(np.flatnonzero((weekdays != usual).to_numpy())[0])
        raise UserError(f"{name}, column Date, row {first + 2}: {frame['Date'].iloc[first]:%Y-%m-%d} is not on the "
                        f"same weekday as the other weeks; the data must be weekly")


def _check_unique(name: str, frame: pd.DataFrame, keys: list[str]) -> None:
    duplicated = frame.duplicated(keys)
    if duplicated.any():
        first = int(np.flatnonzero(duplicated.to_numpy())[0])
        row = frame.iloc[first]
        described = ", ".join(f"{k}={row[k]:%Y-%m-%d}" if k == "Date" else f"{k}={row[k]}" for k in keys)
        raise UserError(f"{name}, row {first + 2}: a second row for {described}")


def load(folder: str | Path) -> RawData:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--kaggle-dir {folder}: no such folder")
    train = _parse("train.csv", _read_bytes(folder, "train.csv"))
    features = _parse("features.csv", _read_bytes(folder, "features.csv"))
    stores = _parse("stores.csv", _read_bytes(folder, "stores.csv"))
    _check_weekly("train.csv", train)
    _check_unique("train.csv", train, ["Store", "Dept", "Date"])
    _check_unique("features.csv", features, ["Store", "Date"])
    _check_unique("stores.csv", stores, ["Store"])
    if (train["Dept"] < 1).any() or (train["Dept"] >= 1000).any():
        first = int(np.flatnonzero(((train["Dept"] < 1) | (train["Dept"] >= 1000)).to_numpy())[0])
        raise UserError(f"train.csv, column Dept, row {first + 2}: {train['Dept'].iloc[first]} is outside 1-999")

    known_stores = set(stores["Store"])
    unknown = ~train["Store"].isin(known_stores)
    if unknown.any():
        first = int(np.flatnonzero(unknown.to_numpy())[0])
        raise UserError(f"train.csv, column Store, row {first + 2}: store {train['Store'].iloc[first]} is not in "
                        "stores.csv")
    covered = train.merge(features[["Store", "Date"]], on=["Store", "Date"], how="left", indicator=True)
    uncovered = (covered["_merge"] == "left_only").to_numpy()
    if uncovered.any():
        first = int(np.flatnonzero(uncovered)[0])
        raise UserError(f"train.csv, row {first + 2}: features.csv has no row for Store={train['Store'].iloc[first]}"
                        f", Date={train['Date'].iloc[first]:%Y-%m-%d}")
    next_week = train["Date"].max() + pd.Timedelta(weeks=1)
    missing_next = sorted(known_stores & set(train["Store"]) - set(features.loc[features["Date"] == next_week,
                                                                                   "Store"]))
    if missing_next:
        raise UserError(f"features.csv: no row for the week to forecast ({next_week:%Y-%m-%d}) for store(s) "
                        f"{', '.join(map(str, missing_next[:10]))}; the file must reach one week past train.csv")

    sales = pd.DataFrame({
        "store": train["Store"], "dept": train["Dept"], "date": train["Date"],
        "weekly_sales": train["Weekly_Sales"], "is_holiday": train["IsHoliday"], "expected_sales": np.nan,
    })
    external = pd.DataFrame({
        "store": features["Store"], "date": features["Date"], "temperature": features["Temperature"],
        "fuel_price": features["Fuel_Price"],
        **{m: features[m.replace("markdown", "MarkDown")] for m in MARKDOWNS},
        "cpi": features["CPI"], "unemployment": features["Unemployment"], "is_holiday": features["IsHoliday"],
    })
    stores_out = pd.DataFrame({"store": stores["Store"], "type": stores["Type"], "size": stores["Size"]})
    return RawData(sales=sales, external=external, stores=stores_out, source=f"kaggle:{folder}")
