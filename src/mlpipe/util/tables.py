"""Reading users' CSV and Parquet files the same way in `prepare` and in `mlpipe predict`.

Every cell is read as text first, trimmed, and matched against the missing-value markers; only
then are columns typed. So ` 3.5 `, `NA ` and `?` mean what a person reading the file would
think, and a file read for prediction is typed exactly like the one the model was trained on.
Imports no TensorFlow.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from mlpipe import MlpipeError
from mlpipe.params import CsvParams

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")
SNIFF_BYTES = 64 * 1024
TRUE_WORDS = frozenset({"true", "yes"})
FALSE_WORDS = frozenset({"false", "no"})


class DataError(MlpipeError):
    """The data cannot be used as configured."""


def read_table(path: str | Path, csv_params: CsvParams) -> pd.DataFrame:
    """The whole file as a frame with typed columns (see `type_columns`)."""
    path = _existing(path)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        frame = _read_parquet(path)
    else:
        frame = pd.read_csv(path, **_csv_options(path, csv_params))
    if frame.empty:
        raise DataError(f"{path}: no data rows after the header; the file needs at least one row")
    return type_columns(frame, csv_params.na_values)


def iter_table(path: str | Path, csv_params: CsvParams, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The file in chunks of raw cells (trimmed text for CSV), for bounded memory."""
    path = _existing(path)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        _check_unique(path, pq.ParquetFile(path).schema_arrow.names)
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
            yield clean_cells(batch.to_pandas(), csv_params.na_values)
        return
    with pd.read_csv(path, chunksize=chunk_rows, **_csv_options(path, csv_params)) as chunks:
        for chunk in chunks:
            yield clean_cells(chunk, csv_params.na_values)


def clean_cells(frame: pd.DataFrame, na_values: list[str]) -> pd.DataFrame:
    """Trim text cells and turn the missing-value markers into missing values."""
    markers = list(na_values)
    out = {}
    for name in frame.columns:
        column = frame[name]
        if is_text(column):
            text = column.astype("str").str.strip()
            column = text.mask(text.isin(markers))
        out[name] = column
    return pd.DataFrame(out, index=frame.index)


def type_columns(frame: pd.DataFrame, na_values: list[str]) -> pd.DataFrame:
    """Columns whose every present value is a number become numeric, true/false words become
    booleans, and the rest stay text."""
    frame = clean_cells(frame, na_values)
    return pd.DataFrame({name: infer_column(frame[name]) for name in frame.columns})


def is_text(column: pd.Series) -> bool:
    return column.dtype == object or pd.api.types.is_string_dtype(column)


def infer_column(column: pd.Series) -> pd.Series:
    if not is_text(column):
        return column
    present = column.dropna()
    if present.empty:
        return column.astype("float64")
    numbers = pd.to_numeric(present, errors="coerce")
    if numbers.notna().all():
        return pd.to_numeric(column)
    words = present.str.lower()
    if words.isin(TRUE_WORDS | FALSE_WORDS).all() and len(present) == len(column):
        return words.isin(TRUE_WORDS)
    return column.astype("str")


def to_numeric(column: pd.Series, where: str, first_row: int = 1) -> np.ndarray:
    """float32 values of a numeric column (missing: NaN; true/false words: 1/0); text that is
    no number is an error naming the column and the row (`first_row` numbers the first)."""
    if pd.api.types.is_bool_dtype(column):
        return column.to_numpy(dtype=np.float32)
    if pd.api.types.is_numeric_dtype(column):
        return column.to_numpy(dtype=np.float32, na_value=np.nan)
    column = column.astype("str")
    numbers = pd.to_numeric(column, errors="coerce")
    failed = numbers.isna() & column.notna()
    if failed.any():  # true/false words, else junk
        words = column[failed].str.lower()
        numbers.loc[words[words.isin(TRUE_WORDS)].index] = 1.0
        numbers.loc[words[words.isin(FALSE_WORDS)].index] = 0.0
    junk = numbers.isna() & column.notna()
    if junk.any():
        position = int(np.flatnonzero(junk.to_numpy())[0])
        raise DataError(
            f"{where}: column `{column.name}` is numeric but row {position + first_row} holds "
            f"{column.iloc[position]!r} ({int(junk.sum())} such rows); fix the value, add its "
            "marker to data.csv.na_values, or declare the column in data.categorical"
        )
    return numbers.to_numpy(dtype=np.float32, na_value=np.nan)


def to_categories(column: pd.Series) -> np.ndarray:
    """Category values as text, the same whatever type a file gave them: 3, 3.0 and "3" are all
    "3"; missing values are ""."""
    if pd.api.types.is_bool_dtype(column):
        return np.where(column.to_numpy(dtype=bool), "True", "False").astype(object)
    if pd.api.types.is_numeric_dtype(column):
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        whole = np.isfinite(values) & (values == np.round(values))
        text = np.where(
            whole, np.nan_to_num(values).astype(np.int64).astype(str), values.astype(str)
        )
        return np.where(np.isnan(values), "", text).astype(object)
    text = column.astype("str").str.strip().fillna("")
    return text.to_numpy(dtype=object)


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (paths are relative to the project root)")
    if path.suffix.lower() not in CSV_SUFFIXES + PARQUET_SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type `{path.suffix}`; use one of "
            f"{', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)}"
        )
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    return path


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a file that is not Parquet
        raise DataError(f"{path}: not a readable Parquet file ({err})") from err
    _check_unique(path, table.schema.names)
    return table.to_pandas()


def _csv_options(path: Path, csv_params: CsvParams) -> dict:
    """Read every cell as text; the delimiter is sniffed unless data.csv.sep gives it."""
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        sample = handle.read(SNIFF_BYTES)
    if not sample.strip():
        raise DataError(f"{path}: the file is empty")
    sep = csv_params.sep or _sniff_delimiter(sample)
    header = next(csv.reader([sample.splitlines()[0]], delimiter=sep))
    _check_unique(path, [name.strip() for name in header])
    return {
        "sep": sep,
        "dtype": str,
        "keep_default_na": False,
        "na_filter": False,
        "skipinitialspace": True,
        "encoding": "utf-8",
        "converters": None,
    } | {"names": [name.strip() for name in header], "header": 0}


def _sniff_delimiter(sample: str) -> str:
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","  # one column, or too irregular to tell: the common case


def _check_unique(path: Path, names: list[str]) -> None:
    seen: set[str] = set()
    duplicates = sorted({name for name in names if name in seen or seen.add(name)})  # type: ignore[func-returns-value]
    if duplicates:
        raise DataError(
            f"{path}: duplicate column names {duplicates}; rename them so each column has one name"
        )
