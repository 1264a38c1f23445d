"""`mlpipe predict`: run an exported model on new rows, chunk by chunk.

Rows are read with the same rules as in training (`tables`), checked against the `Schema` in
the export's metadata, and written with the predicted label or value, plus one probability
column per class for classification. Memory stays bounded by the chunk size, whatever the
file's length.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
import weakref
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mlpipe import MlpipeError
from mlpipe.params import CsvParams
from mlpipe.schema import Feature, Schema
from mlpipe.serving.metadata import ExportMetadata, read_metadata
from mlpipe.util import files
from mlpipe.util.paths import CORE_CONFIG_FILE, KERAS_FILE, METADATA_FILE
from mlpipe.util.tables import PARQUET_SUFFIXES, DataError, iter_table

if TYPE_CHECKING:
    import keras

log = logging.getLogger("mlpipe.predict")

PREDICTION = "prediction"
# Rows per model call: large, so that a million rows take a few calls; and rows read at a time
BATCH_SIZE = 65_536
CHUNK_ROWS = 100_000


def load(model_path: str | Path) -> tuple[keras.Model, Schema]:
    """The model and the schema of its data, from an export folder, a trained model folder or
    a `.keras` file. The schema is the export's metadata where there is one.

    Beside a bare `.keras` file without metadata.json, the features are read off the model's
    inputs and classes are reported by index.
    """
    from mlpipe.modeling.models import load_model, load_model_folder

    path = Path(model_path)
    model_file = path / KERAS_FILE if path.is_dir() else path
    if path.is_dir() and (path / CORE_CONFIG_FILE).is_file():
        model = load_model_folder(path)  # a subclass as the train stage saves it
    elif path.is_dir() and not model_file.is_file():
        raise MlpipeError(
            f"{path}: no {KERAS_FILE} in this folder; pass an export folder (models/export) or "
            "a .keras file"
        )
    else:
        model = load_model(model_file)
    meta = metadata_beside(path)
    if meta is not None:
        return model, meta
    log.info("no %s beside %s: features taken from the model's inputs", METADATA_FILE, path)
    return model, schema_from_model(model)


def schema_from_model(model: keras.Model) -> Schema:
    """What a model tells of its data: the features by its inputs' names and types, the task by
    its output layer. Classes are known by index only, and the target not at all: the
    prediction column's name stands in for it."""
    from mlpipe.modeling.models import main_output, split_model

    inputs = model.input if isinstance(model.input, dict) else {t.name: t for t in model.inputs}
    features = tuple(
        Feature(name=name, input=name, kind="numeric" if t.dtype == "float32" else "categorical")
        for name, t in inputs.items()
    )
    units = main_output(model.output).shape[-1]
    try:
        core = split_model(model)[1]
    except MlpipeError:  # a model from elsewhere: its last layer is taken as the output
        core = model
    heads = [layer for layer in core.layers if layer.name in ("main", "output")]
    head = (heads or core.layers)[-1]
    head = getattr(head, "layers", [head])[-1]
    name = getattr(getattr(head, "activation", None), "__name__", "linear")
    if name in ("softmax", "sigmoid"):
        task, classes = "classification", tuple(range(max(units, 2)))
    else:
        task, classes = "regression", None
    return Schema(features=features, target=PREDICTION, task=task, classes=classes)


def csv_params(schema: Schema) -> CsvParams:
    """How to read a CSV file: as the training data was read, or by default for a bare model."""
    return schema.csv if isinstance(schema, ExportMetadata) else CsvParams()


def check_columns(columns: list[str], schema: Schema, where: str) -> list[str]:
    """Fail on a missing feature column; return the extra columns, which are ignored."""
    needed = schema.feature_names
    missing = [name for name in needed if name not in columns]
    if missing:
        raise DataError(
            f"{where}: missing columns {missing}; the model needs {len(needed)} feature "
            f"columns: {', '.join(needed)}"
        )
    return [c for c in columns if c not in needed and c != schema.id_column]


def output_frame(raw: np.ndarray, schema: Schema, ids: pd.Series | None) -> pd.DataFrame:
    """The prediction column, and for classification one `proba_<class>` column per class."""
    from mlpipe.evaluation.metrics import class_probabilities

    out = pd.DataFrame(index=range(len(raw)))
    if ids is not None:
        out[ids.name] = ids.to_numpy()
    if schema.task == "regression":
        out[PREDICTION] = np.asarray(raw, dtype=np.float32).reshape(-1)
        return out
    classes = schema.classes or ()
    proba = class_probabilities(raw, len(classes)).astype(np.float32)
    # Categorical: the label of each row without a million Python objects
    out[PREDICTION] = pd.Categorical.from_codes(proba.argmax(axis=1), categories=list(classes))
    for i, label in enumerate(classes):
        out[f"proba_{label}"] = proba[:, i]
    return out


_TRACED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class Predictor:
    """A loaded model and its schema: a frame of raw cells in, predictions out. What both
    `mlpipe predict` and `mlpipe serve` run, so that they cannot disagree.

    The model runs as one traced TensorFlow function over `batch_size` rows at a time, fed two
    matrices (numeric and categorical columns) that it splits into the model's named inputs
    itself: no per-call Keras overhead, no retracing, and a few tensors per call however many
    columns there are."""

    def __init__(self, model: keras.Model, schema: Schema, batch_size: int = BATCH_SIZE):
        self.model, self.schema, self.batch_size = model, schema, batch_size
        if model not in _TRACED:  # one function per model, traced once
            _TRACED[model] = _traced(model, schema)
        self._call = _TRACED[model]

    def check(self, columns: list[str], where: str) -> list[str]:
        """Fail on a missing feature column; return the extra columns, which are ignored."""
        return check_columns(columns, self.schema, where)

    def raw(self, frame: pd.DataFrame, where: str, first_row: int = 1) -> np.ndarray:
        """The main output for the rows of `frame` (raw cells, as `tables` reads them)."""
        from mlpipe.features import input_matrices

        numbers, texts = input_matrices(frame, self.schema, where, first_row)
        texts = texts.astype(np.str_) if texts.size else np.zeros(texts.shape, np.str_)
        parts = []
        for start in range(0, len(frame), self.batch_size):
            end = start + self.batch_size
            # The numbers go in transposed, one contiguous row per column
            columns = np.ascontiguousarray(numbers[start:end].T)
            parts.append(self._call(columns, texts[start:end]).numpy())
        return np.concatenate(parts) if len(parts) != 1 else parts[0]

    def frame(self, frame: pd.DataFrame, where: str, first_row: int = 1) -> pd.DataFrame:
        """`output_frame` of the rows of `frame`, with their id column when they have it."""
        id_column = self.schema.id_column
        ids = frame[id_column] if id_column and id_column in frame else None
        return output_frame(self.raw(frame, where, first_row), self.schema, ids)


def _traced(model: keras.Model, schema: Schema):
    """The model as a TensorFlow function of (columns, texts): the numeric columns as rows
    (numeric, n) and the categorical ones (n, categorical), as `features.input_matrices` gives
    them, split into the model's named inputs inside the function."""
    import tensorflow as tf

    from mlpipe.modeling.models import main_output

    numeric = [f.input for f in schema.features if f.kind == "numeric"]
    categorical = [f.input for f in schema.features if f.kind == "categorical"]
    held = weakref.ref(model)  # the function must not keep its model alive

    def call(columns, texts):
        inputs = {name: tf.reshape(columns[i], (-1, 1)) for i, name in enumerate(numeric)}
        inputs |= {name: texts[:, i : i + 1] for i, name in enumerate(categorical)}
        return main_output(held()(inputs, training=False))

    return tf.function(
        call,
        input_signature=[
            tf.TensorSpec((len(numeric), None), tf.float32, name="columns"),
            tf.TensorSpec((None, len(categorical)), tf.string, name="texts"),
        ],
    )


def check_output(output_path: str | Path) -> None:
    """Refuse an output path that cannot be written as a file, before any work is done."""
    path = Path(output_path)
    if path.is_dir():
        raise MlpipeError(
            f"--output {path}: is a folder; give the path of a CSV file to write, such as "
            f"{path / 'predictions.csv'}"
        )
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise MlpipeError(f"--output {path}: {parent} is a file, not a folder")


def numeric_names(schema: Schema) -> list[str]:
    """The numeric features, which the reader gives as numbers where a chunk allows."""
    return [f.name for f in schema.features if f.kind == "numeric"]


class Rows:
    """The rows of an input file, chunk by chunk, with the first chunk read at once: a file
    that is missing, unreadable or empty fails here, before TensorFlow and the model load."""

    def __init__(
        self, path: str | Path, csv: CsvParams, chunk_rows: int, numeric: Sequence[str] = ()
    ):
        self.path = str(path)
        self._chunks = iter_table(path, csv, chunk_rows, numeric)
        self.first = next(self._chunks, None)
        if self.first is None:
            raise DataError(f"{path}: no data rows to predict")
        self.columns = list(self.first.columns)
        self.total = _row_count(Path(path))

    def __iter__(self) -> Iterator[pd.DataFrame]:
        assert self.first is not None
        yield self.first
        self.first = None  # no second copy of the first chunk in memory
        yield from self._chunks


def _row_count(path: Path) -> int | None:
    """The number of rows where the file says it without being read (Parquet)."""
    if path.suffix.lower() in PARQUET_SUFFIXES:
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    return None


def write_csv(frame: pd.DataFrame, handle, header: bool) -> None:
    """Append `frame` to an open CSV file through pyarrow's writer: many times faster than
    pandas' for a million rows. Floats are written as the shortest text that reads back to the
    same float32; labels as text (True, not pyarrow's true)."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    columns = {}
    for name in frame.columns:
        column = frame[name]
        if isinstance(column.dtype, pd.CategoricalDtype):
            labels = pa.array([str(c) for c in column.cat.categories], pa.string())
            columns[str(name)] = labels.take(pa.array(column.cat.codes.to_numpy()))
            continue
        if column.dtype == object or pd.api.types.is_bool_dtype(column):
            column = column.astype("string")  # missing stays missing: an empty cell
        columns[str(name)] = pa.array(column, from_pandas=True)
    if header:  # pyarrow quotes every name; written as pandas and the csv module do instead
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerow(columns)
        handle.write(text.getvalue().encode())
    pa_csv.write_csv(pa.table(columns), handle, pa_csv.WriteOptions(include_header=False))


def prefetched(chunks: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """`chunks`, with the next one read in a thread while the current one is predicted and
    written: reading and inference overlap, at the cost of one more chunk in memory."""
    iterator = iter(chunks)
    with ThreadPoolExecutor(1) as reader:
        upcoming = reader.submit(next, iterator, None)
        while (chunk := upcoming.result()) is not None:
            upcoming = reader.submit(next, iterator, None)
            yield chunk


def predict_rows(
    predictor: Predictor, rows: Rows, output_path: str | Path, *, progress: bool = False
) -> int:
    """Predict every row of `rows` into `output_path` (CSV); return the number of rows.

    The output appears only when every row succeeded, so a failure never leaves half a file."""
    from tqdm import tqdm

    extra = predictor.check(rows.columns, rows.path)
    if extra:
        log.info("ignoring columns the model does not use: %s", extra)
    done = 0
    bar = tqdm(
        total=rows.total, unit=" rows", unit_scale=True, disable=not progress, file=sys.stderr
    )
    with bar, files.atomic_path(output_path) as tmp, open(tmp, "wb") as handle:
        for chunk in prefetched(rows):
            if chunk.empty:
                continue
            write_csv(predictor.frame(chunk, rows.path, done + 1), handle, header=done == 0)
            done += len(chunk)
            bar.update(len(chunk))
        if done == 0:
            raise DataError(f"{rows.path}: no data rows to predict")
    return done


def predict_file(
    model: keras.Model,
    schema: Schema,
    input_path: str | Path,
    output_path: str | Path,
    *,
    batch_size: int = BATCH_SIZE,
    chunk_rows: int = CHUNK_ROWS,
    progress: bool = False,
) -> int:
    """Predict every row of `input_path` into `output_path` (CSV); return the number of rows."""
    check_output(output_path)
    rows = Rows(input_path, csv_params(schema), chunk_rows, numeric_names(schema))
    return predict_rows(Predictor(model, schema, batch_size), rows, output_path, progress=progress)


def run(
    model_path: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    *,
    batch_size: int = BATCH_SIZE,
    chunk_rows: int = CHUNK_ROWS,
    progress: bool = False,
    encoding: str | None = None,
) -> int:
    """`mlpipe predict`: the output path, the input file and its columns are checked against
    the export's metadata.json first; only then are TensorFlow and the model loaded.
    `encoding` overrides the CSV encoding of the training data."""
    if not Path(model_path).exists():
        raise MlpipeError(
            f"--model {model_path}: not found; pass an export folder (models/export) or a "
            ".keras file"
        )
    check_output(output_path)
    meta = metadata_beside(model_path)
    reading = csv_params(meta) if meta else CsvParams()
    if encoding:  # the file's encoding, where it differs from the training data's
        reading = reading.model_copy(update={"encoding": encoding})
    rows = Rows(input_path, reading, chunk_rows, numeric_names(meta) if meta else ())
    if meta is not None:
        check_columns(rows.columns, meta, rows.path)
    model, schema = load(model_path)
    return predict_rows(Predictor(model, schema, batch_size), rows, output_path, progress=progress)


def metadata_beside(model_path: str | Path) -> ExportMetadata | None:
    """The export's metadata.json for `--model` (a folder or a `.keras` file), read without
    TensorFlow; None where there is none."""
    path = Path(model_path)
    meta_file = path / METADATA_FILE if path.is_dir() else path.with_name(METADATA_FILE)
    return read_metadata(meta_file) if meta_file.is_file() else None
