"""`mlpipe predict`: run an exported model on new rows, chunk by chunk.

Rows are read with the same rules as in training (`tables`), checked against the `Schema` in
the export's metadata, and written with the predicted label or value, plus one probability
column per class for classification. Memory stays bounded by the chunk size, whatever the
file's length.
"""

from __future__ import annotations

import logging
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
from mlpipe.util.tables import DataError, iter_table

if TYPE_CHECKING:
    import keras

log = logging.getLogger("mlpipe.predict")

PREDICTION = "prediction"


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
    meta_file = model_file.with_name(METADATA_FILE)
    if meta_file.is_file():
        return model, read_metadata(meta_file)
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
        out[PREDICTION] = np.asarray(raw, dtype=np.float64).reshape(-1)
        return out
    classes = schema.classes or ()
    proba = class_probabilities(raw, len(classes))
    out[PREDICTION] = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
    for i, label in enumerate(classes):
        out[f"proba_{label}"] = proba[:, i]
    return out


def predict_file(
    model: keras.Model,
    schema: Schema,
    input_path: str | Path,
    output_path: str | Path,
    *,
    batch_size: int = 8192,
    chunk_rows: int = 100_000,
    csv: CsvParams | None = None,
) -> int:
    """Predict every row of `input_path` into `output_path` (CSV); return the number of rows.
    `csv` overrides how a CSV file is read (default: as the training data was).

    The output appears only when every row succeeded, so a failure never leaves half a file.
    """
    from mlpipe.features import model_inputs, predict
    from mlpipe.modeling.models import main_output

    rows = 0
    with files.atomic_path(output_path) as tmp:
        with open(tmp, "w", newline="") as handle:
            checked = False
            numeric = [f.name for f in schema.features if f.kind == "numeric"]
            reading = csv or csv_params(schema)
            for chunk in iter_table(input_path, reading, chunk_rows, numeric):
                if not checked:
                    extra = check_columns(list(chunk.columns), schema, str(input_path))
                    if extra:
                        log.info("ignoring columns the model does not use: %s", extra)
                    checked = True
                if chunk.empty:
                    continue
                inputs = model_inputs(chunk, schema, str(input_path), rows + 1)
                raw = main_output(predict(model, inputs, batch_size))
                id_column = schema.id_column
                ids = chunk[id_column] if id_column and id_column in chunk else None
                output_frame(raw, schema, ids).to_csv(
                    handle, header=rows == 0, index=False, float_format="%.7g"
                )
                rows += len(chunk)
        if rows == 0:
            raise DataError(f"{input_path}: no data rows to predict")
    return rows
