"""The Kaggle loader: the same tables as the generator, and errors that name file, column and row."""

import zipfile

import numpy as np
import pandas as pd
import pytest

from salesfc.data import kaggle, synthetic
from salesfc.errors import UserError


@pytest.fixture(scope="module")
def raw():
    return synthetic.generate("tiny", seed=11)


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"])
def test_round_trip_gives_the_same_tables(raw, tmp_path, ending):
    synthetic.to_kaggle_csvs(raw, tmp_path, line_ending=ending)
    loaded = kaggle.load(tmp_path)
    expected = raw.sales.drop(columns="expected_sales")
    pd.testing.assert_frame_equal(loaded.sales.drop(columns="expected_sales"), expected, check_dtype=False)
    assert loaded.sales["expected_sales"].isna().all() and not loaded.has_signal
    pd.testing.assert_frame_equal(loaded.external, raw.external, check_dtype=False)
    pd.testing.assert_frame_equal(loaded.stores, raw.stores, check_dtype=False)


def test_zipped_files_and_the_competition_bundle(raw, tmp_path):
    plain = tmp_path / "plain"
    synthetic.to_kaggle_csvs(raw, plain)
    zipped = tmp_path / "zipped"
    zipped.mkdir()
    for name in ("train.csv", "features.csv", "stores.csv"):
        with zipfile.ZipFile(zipped / f"{name}.zip", "w") as archive:
            archive.write(plain / name, name)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    with zipfile.ZipFile(bundle / "walmart-recruiting-store-sales-forecasting.zip", "w") as archive:
        for name in ("train.csv", "features.csv", "stores.csv"):
            archive.write(zipped / f"{name}.zip", f"{name}.zip")
    for folder in (zipped, bundle):
        assert len(kaggle.load(folder).sales) == len(raw.sales)


def write(folder, raw, edit):
    synthetic.to_kaggle_csvs(raw, folder)
    name, change = edit
    path = folder / name
    lines = path.read_text().split("\n")
    path.write_text("\n".join(change(lines)))


@pytest.mark.parametrize("edit, message", [
    (("train.csv", lambda l: [l[0]] + [l[1].replace(l[1].split(",")[3], "abc")] + l[2:]),
     "train.csv, column Weekly_Sales, row 2: 'abc' is not a number"),
    (("train.csv", lambda l: l[:5] + [l[5].replace("2010-", "2010/")] + l[6:]),
     "train.csv, column Date, row 6"),
    (("train.csv", lambda l: l[:3] + [l[3].rsplit(",", 1)[0] + ",maybe"] + l[4:]),
     "train.csv, column IsHoliday, row 4: 'maybe' is not TRUE or FALSE"),
    (("train.csv", lambda l: [l[0].replace("Weekly_Sales", "Sales")] + l[1:]),
     "train.csv: missing column(s) Weekly_Sales"),
    (("train.csv", lambda l: l + [l[1]]), "a second row for Store="),
    (("stores.csv", lambda l: l[:1] + l[2:]), "is not in stores.csv"),
    (("features.csv", lambda l: [x for x in l if "2012-11-02" not in x]), "the week to forecast (2012-11-02)"),
    (("train.csv", lambda l: l[:7] + [",".join([l[7].split(",")[0], "1.5", *l[7].split(",")[2:]])] + l[8:]),
     "train.csv, column Dept, row 8: '1.5' is not a whole number"),
])
def test_errors_name_the_file_column_and_row(raw, tmp_path, edit, message):
    write(tmp_path, raw, edit)
    with pytest.raises(UserError) as caught:
        kaggle.load(tmp_path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_file_says_what_to_do(raw, tmp_path):
    synthetic.to_kaggle_csvs(raw, tmp_path)
    (tmp_path / "stores.csv").unlink()
    with pytest.raises(UserError, match="no stores.csv .* point --kaggle-dir"):
        kaggle.load(tmp_path)
    with pytest.raises(UserError, match="no such folder"):
        kaggle.load(tmp_path / "nope")


def test_missing_values_in_optional_columns_are_kept(raw, tmp_path):
    synthetic.to_kaggle_csvs(raw, tmp_path)
    loaded = kaggle.load(tmp_path)
    assert loaded.external["markdown1"].isna().any()
    assert np.isfinite(loaded.external["temperature"]).all()


@pytest.mark.parametrize("name, change, message", [
    ("train.csv", lambda text: "", "train.csv: the file is empty; it must start with the header Store,Dept,"),
    ("stores.csv", lambda text: "\n\n", "stores.csv: the file is empty"),
    ("train.csv", lambda text: text.replace("\n", "\n1,1,2010-02-05,12,5,FALSE\n", 1),
     "train.csv, row 2: 6 fields where the header has 5; a comma inside a value"),
    ("train.csv", lambda text: text.replace("\n", "\n1,1,2010-02-05\n", 1),
     "train.csv, column Weekly_Sales, row 2: '' is missing"),  # a short row reads as empty fields
    ("stores.csv", lambda text: text.replace("\n", '\n99,"A,1000\n', 1), "stores.csv, row 2: a quote"),
])
def test_malformed_files_give_one_line_naming_the_file_and_row(raw, tmp_path, name, change, message):
    synthetic.to_kaggle_csvs(raw, tmp_path)
    path = tmp_path / name
    path.write_text(change(path.read_text()))
    with pytest.raises(UserError) as caught:
        kaggle.load(tmp_path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value).strip() and not str(caught.value).endswith("\n")


def test_a_damaged_zip_is_one_clear_error(raw, tmp_path):
    synthetic.to_kaggle_csvs(raw, tmp_path)
    (tmp_path / "train.csv").unlink()
    (tmp_path / "train.csv.zip").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(UserError, match="should hold train.csv is damaged .* download it again"):
        kaggle.load(tmp_path)
