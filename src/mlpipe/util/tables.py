"""Reading users' CSV and Parquet files the same way in `prepare` and in `mlpipe predict`.

Every cell is read as text first, trimmed, and matched against the missing-value markers; only
then are columns typed. So ` 3.5 `, `NA ` and `?` mean what a person reading the file would
think, and a file read for prediction is typed exactly like the one the model was trained on.
Imports no TensorFlow.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from mlpipe import MlpipeError
from mlpipe.params import CsvParams

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")
SNIFF_BYTES = 64 * 1024
READ_BLOCK_BYTES = 16 * 2**20
_NULL_TEXT = pa.scalar(None, pa.string())
# Bytes that text tables do not hold: anything below a space but tab, newline, carriage return.
CONTROL_BYTES = bytes(b for b in range(32) if b not in (9, 10, 13))
BINARY_SIGNATURES = {
    b"PK\x03\x04": "a ZIP archive, as an Excel .xlsx workbook is: save the sheet as CSV UTF-8",
    b"PAR1": "a Parquet file: give it a .parquet suffix",
    b"\xd0\xcf\x11\xe0": "an old Excel .xls workbook: save the sheet as CSV UTF-8",
    b"\x1f\x8b": "a gzip archive: decompress it first",
    b"SQLite format 3": "an SQLite database: export the table as CSV",
    b"%PDF": "a PDF document",
}
TRUE_WORDS = frozenset({"true", "yes"})
FALSE_WORDS = frozenset({"false", "no"})
FLOAT32_MAX = float(np.finfo(np.float32).max)


class DataError(MlpipeError):
    """The data cannot be used as configured."""


def read_table(
    path: str | Path, csv_params: CsvParams, relabel: dict[str, dict[str, str]] | None = None
) -> pd.DataFrame:
    """The whole file as a frame with typed columns (see `type_columns`). `relabel` maps, per
    column, a cell's trimmed text to another before the columns are typed."""
    path = _existing(path)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        frame = clean_cells(_read_parquet(path), csv_params.na_values)
    else:
        chunks = list(_csv_chunks(path, csv_params, None, ()))
        frame = pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]
    if frame.empty:
        raise DataError(f"{path}: no data rows after the header; the file needs at least one row")
    for name, mapping in (relabel or {}).items():
        if name in frame.columns:
            frame[name] = _relabel(frame[name], mapping)
    return pd.DataFrame({name: infer_column(frame[name]) for name in frame.columns})


def iter_table(
    path: str | Path, csv_params: CsvParams, chunk_rows: int, numeric: Collection[str] = ()
) -> Iterator[pd.DataFrame]:
    """The file in chunks of at most `chunk_rows` rows of raw cells (trimmed text for CSV, the
    missing-value markers as missing), for bounded memory. Columns named in `numeric` come as
    float64 in a chunk where every present cell is a number, else as text (for `to_numeric`
    to convert or to report the row)."""
    path = _existing(path)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        _check_unique(path, pq.ParquetFile(path).schema_arrow.names)
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
            yield clean_cells(batch.to_pandas(), csv_params.na_values)
        return
    yield from _csv_chunks(path, csv_params, chunk_rows, numeric)


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
        with np.errstate(over="ignore"):  # beyond float32: inf, which `_finite` reports
            values = column.to_numpy(dtype=np.float32, na_value=np.nan)
        return _finite(values, column, where, first_row)
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
    with np.errstate(over="ignore"):
        values = numbers.to_numpy(dtype=np.float32, na_value=np.nan)
    return _finite(values, column, where, first_row)


def _finite(values: np.ndarray, column: pd.Series, where: str, first_row: int) -> np.ndarray:
    """`values` (float32), unless one is infinite: in the file, or beyond float32's range."""
    if not np.isinf(values).any():
        return values
    rows = np.flatnonzero(np.isinf(values))
    value = column.iloc[rows[0]]
    raise DataError(
        f"{where}: column `{column.name}` holds {getattr(value, 'item', lambda: value)()!r} in row "
        f"{rows[0] + first_row} ({len(rows)} such rows): infinite, or beyond float32's "
        f"±{FLOAT32_MAX:.3g}; a model cannot use it. Fix the value, or list it in "
        "data.csv.na_values to read it as missing"
    )


def check_finite(frame: pd.DataFrame, where: str, skip: Collection[str] = ()) -> None:
    """Refuse a numeric column holding infinities or numbers beyond float32's range, naming
    the column and its first rows: such a value trains a model into predicting a constant."""
    for name in frame.columns:
        column = frame[name]
        if name in skip or not pd.api.types.is_float_dtype(column):
            continue
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(np.abs(values) > FLOAT32_MAX)
        if len(bad):
            rows = ", ".join(str(r + 1) for r in bad[:5]) + (", ..." if len(bad) > 5 else "")
            shown = sorted({repr(float(v)) for v in values[bad[:5]]})
            raise DataError(
                f"{where}: column `{name}` holds {', '.join(shown)} in {len(bad)} rows (rows "
                f"{rows}): infinite, or beyond float32's ±{FLOAT32_MAX:.3g}; training on it "
                "yields a model that predicts a constant. Fix the values, or list them as "
                "written (e.g. inf) in data.csv.na_values to read them as missing"
            )


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


def _relabel(column: pd.Series, mapping: dict[str, str]) -> pd.Series:
    """Cells whose text is a key of `mapping` replaced by its value, as text."""
    text = column if is_text(column) else pd.Series(to_categories(column), index=column.index)
    if not text.isin(list(mapping)).any():
        return column
    return text.astype("str").replace(mapping).mask(column.isna()).rename(column.name)


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


@dataclass(frozen=True)
class _Layout:
    """What a CSV file's first bytes tell: its delimiter, header and encoding for Arrow."""

    sep: str
    raw_names: list[str]
    names: list[str]
    encoding: str
    header_line: int = 1


def _layout(path: Path, csv_params: CsvParams) -> _Layout:
    """Check the file's first bytes (binary? decodable?), find the delimiter and the header."""
    with open(path, "rb") as handle:
        head = handle.read(SNIFF_BYTES)
        while b"\n" not in head.lstrip(b"\r\n") and len(head) < READ_BLOCK_BYTES:
            more = handle.read(SNIFF_BYTES)  # a header of many columns: read all of it
            if not more:
                break
            head += more
    encoding = codecs.lookup(csv_params.encoding).name
    _refuse_binary(path, head, encoding)
    try:
        sample = codecs.getincrementaldecoder(encoding)().decode(head, final=False)
    except UnicodeDecodeError:
        header = head.split(b"\n", 1)[0].decode(encoding, errors="replace")
        sep = csv_params.sep or _sniff_delimiter(header)
        names = [
            n.strip() for n in next(csv.reader([header.removeprefix("\ufeff")], delimiter=sep))
        ]
        layout = _Layout(sep=sep, raw_names=names, names=names, encoding=encoding)
        raise _encoding_error(path, csv_params, layout) from None
    sample = sample.removeprefix("\ufeff")  # the byte-order mark Excel writes in "CSV UTF-8"
    if not sample.strip():
        raise DataError(f"{path}: the file is empty")
    sep = csv_params.sep or _sniff_delimiter(sample)
    lines = sample.splitlines()
    blank = next(i for i, line in enumerate(lines) if line.strip())  # skipped, as pandas does
    raw_names = next(csv.reader([lines[blank]], delimiter=sep))
    names = [name.strip() for name in raw_names]
    _check_unique(path, names)
    arrow_encoding = "utf8" if encoding in ("utf-8", "utf-8-sig") else encoding
    return _Layout(sep, raw_names, names, arrow_encoding, header_line=blank + 1)


def _csv_chunks(
    path: Path, csv_params: CsvParams, chunk_rows: int | None, numeric: Collection[str]
) -> Iterator[pd.DataFrame]:
    """Chunks of `chunk_rows` rows (None: the whole file in one), parsed by Arrow as text.

    Every cell is read as text, then trimmed and matched against the markers. Reading numbers as
    text and casting the trimmed column is also faster than Arrow's own number parsing.
    """
    layout = _layout(path, csv_params)
    markers = pa.array(csv_params.na_values, pa.string())
    numeric = [name for name in layout.raw_names if name.strip() in set(numeric)]
    pending: list[pa.RecordBatch] = []
    waiting = 0
    try:
        reader = pa_csv.open_csv(
            path,
            read_options=pa_csv.ReadOptions(
                column_names=layout.raw_names,
                skip_rows=layout.header_line,
                block_size=READ_BLOCK_BYTES,
                encoding=layout.encoding,
            ),
            parse_options=pa_csv.ParseOptions(delimiter=layout.sep, newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                column_types={name: pa.string() for name in layout.raw_names},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
        for batch in reader:
            pending.append(batch)
            waiting += batch.num_rows
            while chunk_rows is not None and waiting >= chunk_rows:
                table = pa.Table.from_batches(pending)
                yield _cells(table.slice(0, chunk_rows), layout.names, markers, numeric)
                rest = table.slice(chunk_rows)
                pending, waiting = rest.to_batches(), rest.num_rows
    except (pa.ArrowInvalid, UnicodeDecodeError) as err:
        raise _read_error(path, csv_params, layout, err) from None
    if waiting or chunk_rows is None:
        table = pa.Table.from_batches(pending, schema=reader.schema)
        yield _cells(table, layout.names, markers, numeric)


def _cells(
    table: pa.Table, names: list[str], markers: pa.Array, numeric: list[str]
) -> pd.DataFrame:
    """Text trimmed, with the markers as missing; `numeric` columns as float64 where every cell
    is a number."""
    columns = []
    for raw_name, column in zip(table.column_names, table.columns, strict=True):
        number = _as_number(column, markers) if raw_name in numeric else None
        if number is not None:
            columns.append(number)
            continue
        column = pc.utf8_trim_whitespace(column)
        column = pc.if_else(pc.is_in(column, value_set=markers), _NULL_TEXT, column)
        if raw_name in numeric:
            with contextlib.suppress(pa.ArrowInvalid):  # else `to_numeric` names the row
                column = pc.cast(column, pa.float64())
        columns.append(column)
    return pa.table(columns, names=names).to_pandas()


def _as_number(column: pa.ChunkedArray, markers: pa.Array) -> pa.ChunkedArray | None:
    """The column as float64 when no cell needs trimming (Arrow's cast refuses padding, so a
    cast that succeeds saw none), else None: the common case without the trimming's copy."""
    marked = pc.is_in(column, value_set=markers)
    if pc.any(marked).as_py():
        column = pc.if_else(marked, _NULL_TEXT, column)
    try:
        return pc.cast(column, pa.float64())
    except pa.ArrowInvalid:
        return None


def _refuse_binary(path: Path, head: bytes, encoding: str) -> None:
    """A file that is not text at all (a workbook, an archive, random bytes) is named as such."""
    what = next((text for magic, text in BINARY_SIGNATURES.items() if head.startswith(magic)), "")
    wide = encoding.startswith(("utf-16", "utf-32"))
    if not what and not wide and head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(
            f"{path}: the file is UTF-16 text (it starts with a UTF-16 byte-order mark); set "
            "data.csv.encoding: utf-16 (`mlpipe predict --encoding utf-16`), or save it as UTF-8"
        )
    if not what and not wide:
        control = sum(head.count(bytes([b])) for b in CONTROL_BYTES)
        if control > len(head) // 100:
            what = f"binary data ({control} control bytes in its first {len(head)} bytes)"
    if what:
        raise DataError(
            f"{path}: not a text table: it looks like {what}. mlpipe reads CSV text "
            f"({', '.join(CSV_SUFFIXES)}) and Parquet ({', '.join(PARQUET_SUFFIXES)}) files"
        )


def _read_error(path: Path, csv_params: CsvParams, layout: _Layout, err: Exception) -> DataError:
    """What Arrow could not read, said with the line, the column and what to do."""
    if isinstance(err, UnicodeDecodeError) or "invalid UTF8" in str(err):
        return _encoding_error(path, csv_params, layout)
    counts = re.search(r"Expected (\d+) columns, got (\d+)", str(err))
    if counts:
        line, fields, text = _ragged_line(path, layout)
        where = (
            f"line {line} ({text[:60]!r}) has {fields} field{'s' * (fields != 1)}"
            if line
            else f"a row has {counts[2]} fields"
        )
        sep = layout.sep
        return DataError(
            f"{path}: {where} where the header has {len(layout.names)} (fields split on "
            f'{sep!r}); quote fields that contain {sep!r} ("a{sep}b"), or set data.csv.sep '
            "if the file uses another delimiter"
        )
    return DataError(f"{path}: cannot be read as CSV ({err}); check data.csv.sep and the quoting")


def _encoding_error(path: Path, csv_params: CsvParams, layout: _Layout) -> DataError:
    """The first line that is not in the configured encoding, its column and a likely one."""
    encoding = csv_params.encoding
    line_number, raw = 0, b""
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):  # noqa: B007
            try:
                raw.decode(encoding)
            except UnicodeDecodeError:
                break
    column = ""
    fields = next(csv.reader([raw.decode("latin-1")], delimiter=layout.sep), [])
    for i, field in enumerate(fields):
        try:
            field.encode("latin-1").decode(encoding)
        except UnicodeDecodeError:
            names = layout.names if line_number > 1 else []
            column = f", column `{names[i]}`" if i < len(names) else f", field {i + 1}"
            break
    try:
        raw.decode("cp1252")
        likely = "cp1252"
    except UnicodeDecodeError:
        likely = "latin-1"
    shown = raw.decode("latin-1").strip()[:60]
    return DataError(
        f"{path}: line {line_number}{column} is not valid {encoding} ({shown!r}); the file looks "
        f"like {likely} (Windows and older Excel exports write it). Set data.csv.encoding: "
        f"{likely} in params.yaml (`mlpipe predict --encoding {likely}`), or save the file as "
        "UTF-8"
    )


def _ragged_line(path: Path, layout: _Layout) -> tuple[int, int, str]:
    """The first line whose field count differs from the header's, its count and its text;
    (0, 0, "") where the csv module reads the file differently from Arrow."""
    encoding = "utf-8-sig" if layout.encoding == "utf8" else layout.encoding
    with open(path, newline="", encoding=encoding, errors="replace") as handle:
        reader = csv.reader(handle, delimiter=layout.sep)
        for row in reader:
            if row and len(row) != len(layout.names):
                return reader.line_num, len(row), layout.sep.join(row)
    return 0, 0, ""


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
