"""The prepare stage's work for a folder (or glob) of Parquet files: read batch by batch, checked
per batch, split by a seeded hash of each row's number (or of `data.id_column`) and written as
Parquet shards per split, so memory does not grow with the number of rows. Imports no TensorFlow.

The split is deterministic (the same files, seed and params give the same bytes) and stratified
in expectation: a row's split does not depend on its label, so every class lands in train, valid
and test in the proportions asked for, up to binomial noise (about sqrt(p(1-p)/n) for a class of
n rows).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlpipe import dataset
from mlpipe.params import DataParams
from mlpipe.schema import SPLITS, Schema
from mlpipe.util.files import plain
from mlpipe.util.shards import (
    READ_ROWS,
    common_schema,
    count_rows,
    shard_dir,
    shard_name,
    source_files,
)
from mlpipe.util.tables import FLOAT32_MAX, DataError, clean_cells, to_categories, to_numeric

log = logging.getLogger("mlpipe.data")

# Rows per output shard: a few hundred MB of a wide table, and files that tf.data interleaves.
SHARD_ROWS = 1_000_000


class ShardWriter:
    """Parquet shards of one split, a new file every `shard_rows` rows."""

    def __init__(self, folder: Path, schema: pa.Schema, shard_rows: int = SHARD_ROWS):
        self.folder, self.schema, self.shard_rows = folder, schema, shard_rows
        self.folder.mkdir(parents=True, exist_ok=True)
        self.writer: pq.ParquetWriter | None = None
        self.shards = self.in_shard = self.rows = 0

    def write(self, table: pa.Table) -> None:
        while table.num_rows:
            if self.writer is None:
                path = self.folder / shard_name(self.shards)
                self.writer = pq.ParquetWriter(path, self.schema)
                self.shards, self.in_shard = self.shards + 1, 0
            part = table.slice(0, self.shard_rows - self.in_shard)
            self.writer.write_table(part)
            self.in_shard += part.num_rows
            self.rows += part.num_rows
            table = table.slice(part.num_rows)
            if self.in_shard == self.shard_rows:
                self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def split_keys(values: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per value: pandas's 64-bit hash of the value, mixed with the
    seed's and hashed again (pandas's own `hash_key` salts text only, not numbers)."""
    salt = pd.util.hash_array(np.array([seed], dtype=np.uint64))[0]
    hashes = pd.util.hash_array(pd.util.hash_array(values, categorize=False) ^ salt)
    return (hashes >> np.uint64(11)).astype(np.float64) * 2.0**-53


def assign_splits(keys: np.ndarray, data: DataParams) -> np.ndarray:
    """0 (train), 1 (valid) or 2 (test) per row: test below test_size, then valid."""
    out = np.zeros(len(keys), dtype=np.int8)
    out[keys < data.test_size + data.valid_size] = 1
    out[keys < data.test_size] = 2
    return out


def output_schema(source: pa.Schema, data: DataParams, target: str) -> pa.Schema:
    """The shards' column types: the source's, with data.numeric text columns as float32 and
    the target as text under data.target_map or float64 under data.target_scale."""
    fields = []
    for field in source:
        kind = field.type
        if field.name == target and data.target_map:
            kind = pa.string()
        elif field.name == target and data.target_scale is not None:
            kind = pa.float64()
        elif field.name in data.numeric and not _is_number(kind):
            kind = pa.float32()
        elif pa.types.is_large_string(kind):
            kind = pa.string()
        fields.append(pa.field(field.name, kind))
    return pa.schema(fields)


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


class TargetCounts:
    """Per-split counts of the target's labels while it may be a classification target; counting
    stops once it cannot (more than MAX_CLASSES_FOR_AUTO integers), so memory stays bounded."""

    def __init__(self, task: str, kind: pa.DataType):
        numeric = _is_number(kind) and not pa.types.is_boolean(kind)
        self.task = task
        if task == "auto" and numeric:
            self.task = "auto" if pa.types.is_integer(kind) else "regression"
        elif task == "auto":
            self.task = "classification"
        self.counts: list[Counter] = [Counter(), Counter(), Counter()]

    def add(self, target: pd.Series, which: np.ndarray) -> None:
        if self.task == "regression":
            return
        for split in range(3):
            self.counts[split].update(target[which == split].map(plain).value_counts().to_dict())
        if self.task == "auto" and len(self.total()) > dataset.MAX_CLASSES_FOR_AUTO:
            self.task = "regression"

    def total(self) -> Counter:
        return self.counts[0] + self.counts[1] + self.counts[2]

    def final_task(self) -> str:
        return "classification" if self.task == "auto" else self.task


def prepare_sharded(data: DataParams, seed: int, out: Path) -> tuple[Schema, dict[str, int]]:
    """Check, split and write `data.source` (a folder or glob of Parquet files) into
    out/<split>/part-*.parquet batch by batch; return the schema and the rows per split."""
    if data.test_source or data.split_column:
        raise DataError(
            "data.test_source and data.split_column apply to a single file; with a folder "
            f"source ({data.source}) the splits are cut by a seeded hash of each row"
        )
    paths = source_files(data.source)
    source_schema = common_schema(paths, data.source)
    if count_rows(paths) == 0:
        raise DataError(f"{data.source}: the Parquet files hold no rows; add rows")
    empty = source_schema.empty_table().to_pandas()
    target = _target_name(empty, data)
    dataset.check_weight_column(empty, data, target)
    features = dataset.feature_columns(empty, data, target)
    schema_out = output_schema(source_schema, data, target)
    counts = TargetCounts(data.task, schema_out.field(target).type)
    writers = [ShardWriter(shard_dir(out, name), schema_out) for name in SPLITS]
    row = 0
    for path in paths:
        start_in_file = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_ROWS):
            frame = _checked(batch.to_pandas(), data, target, path, start_in_file + 1)
            ids = frame[data.id_column].to_numpy() if data.id_column else None
            if ids is None:
                ids = np.arange(row, row + len(frame), dtype=np.uint64)
            which = assign_splits(split_keys(ids, seed), data)
            counts.add(frame[target], which)
            table = pa.Table.from_pandas(frame, schema=schema_out, preserve_index=False)
            table = table.replace_schema_metadata(None)
            for split, writer in enumerate(writers):
                writer.write(table.filter(pa.array(which == split)))
            row += len(frame)
            start_in_file += len(frame)
    for writer in writers:
        writer.close()
    sizes = {name: writer.rows for name, writer in zip(SPLITS, writers, strict=True)}
    _check_sizes(sizes, data)
    task = counts.final_task()
    if data.target_scale is not None and task != "regression":
        raise DataError(
            f"data.target_scale divides a regression target; `{target}` is a classification "
            "target here. Set data.target_scale to null."
        )
    if task == "classification":
        _check_labels(counts, target, data)
    schema = dataset.make_schema(empty, target, task, data, features)
    classes = None if task == "regression" else tuple(sorted(counts.total()))
    log.info("task: %s (`%s`)", task, target)
    return schema.model_copy(update={"classes": classes}), sizes


def _target_name(empty: pd.DataFrame, data: DataParams) -> str:
    columns = ", ".join(map(str, empty.columns))
    if data.target is None:
        raise DataError(
            f"data.target: name the column to predict in {data.source}; columns are {columns}"
        )
    if data.target not in empty.columns:
        raise DataError(
            f"data.target: column `{data.target}` is not in {data.source}; columns are {columns}"
        )
    return data.target


def _checked(
    frame: pd.DataFrame, data: DataParams, target: str, path: Path, first_row: int
) -> pd.DataFrame:
    """One batch of raw rows, checked as prepare checks a whole file: text trimmed and the
    missing-value markers missing, no missing target, weights >= 0, numeric columns finite.
    `first_row` numbers the batch's first row within `path`, for the errors."""
    frame = clean_cells(frame, data.csv.na_values)
    missing = frame[target].isna().to_numpy()
    if missing.any():
        rows = (np.flatnonzero(missing)[:5] + first_row).tolist()
        raise DataError(
            f"{path}: target `{target}` is missing in rows {rows}...; fill them in or drop "
            "those rows"
        )
    if data.target_map:
        text = pd.Series(to_categories(frame[target]), index=frame.index)
        frame[target] = text.replace(data.target_map)
    elif data.target_scale is not None:
        frame[target] = frame[target].astype(np.float64) / data.target_scale
    for name in data.numeric:
        if not pd.api.types.is_numeric_dtype(frame[name]):
            frame[name] = to_numeric(frame[name], str(path), first_row)
    if data.weight_column:
        weights = frame[data.weight_column].to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(~(weights >= 0))
        if len(bad):
            raise DataError(
                f"{path}: data.weight_column `{data.weight_column}` must be a number >= 0 in "
                f"every row; row {bad[0] + first_row} holds {plain(weights[bad[0]])!r}"
            )
    for name in frame.columns:
        if name in data.categorical or not pd.api.types.is_float_dtype(frame[name]):
            continue
        values = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(np.abs(values) > FLOAT32_MAX)
        if len(bad):
            raise DataError(
                f"{path}: column `{name}` holds {float(values[bad[0]])!r} in row "
                f"{bad[0] + first_row} ({len(bad)} such rows in rows {first_row}.."
                f"{first_row + len(frame) - 1}): infinite, or beyond float32's "
                f"±{FLOAT32_MAX:.3g}. Fix the values, or list them as written (e.g. inf) in "
                "data.csv.na_values to read them as missing"
            )
    return frame


def _check_sizes(sizes: dict[str, int], data: DataParams) -> None:
    empty = [name for name, n in sizes.items() if n == 0]
    if empty:
        raise DataError(
            f"{data.source}: the {', '.join(empty)} split got no rows of {sum(sizes.values())}; "
            "use more rows or a larger data.test_size / data.valid_size"
        )


def _check_labels(counts: TargetCounts, target: str, data: DataParams) -> None:
    """At least two classes, and no valid or test label that no training row has."""
    total = counts.total()
    if len(total) < 2:
        raise DataError(
            f"{data.source}: target `{target}` has a single class "
            f"({next(iter(total))!r}); a classifier needs at least two"
        )
    known = counts.counts[0]
    for name, split in (("valid", counts.counts[1]), ("test", counts.counts[2])):
        unseen = sorted((label for label in split if label not in known), key=str)
        if unseen:
            raise DataError(
                f"{data.source}: the {name} rows have target `{target}` labels that no training "
                f"row has: {unseen[:10]} ({sum(split[u] for u in unseen)} rows); add rows of "
                "those classes, merge them with data.target_map, or drop them"
            )
