"""Loading, splitting and describing tabular data. Imports no TensorFlow."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import datasets
from sklearn.model_selection import train_test_split

from mlpipe import MlpipeError
from mlpipe.config import DataParams
from mlpipe.io import plain

SPLITS = ("train", "valid", "test")
SCHEMA_FILE = "schema.json"

# Datasets that ship inside scikit-learn, so they load without a network.
SKLEARN_LOADERS: dict[str, Callable] = {
    "digits": datasets.load_digits,
    "breast_cancer": datasets.load_breast_cancer,
    "wine": datasets.load_wine,
    "iris": datasets.load_iris,
    "diabetes": datasets.load_diabetes,
}
# Integer targets with at most this many distinct values are taken as class labels.
MAX_CLASSES_FOR_AUTO = 30


class DataError(MlpipeError):
    """The data cannot be used as configured."""


def load_source(source: str) -> tuple[pd.DataFrame, str]:
    """Load `data.source` as one frame; return it with the dataset's own target column name."""
    name = source.removeprefix("sklearn:")
    loader = SKLEARN_LOADERS.get(name)
    if loader is None:
        raise DataError(
            f"data.source: unknown dataset `{source}`; "
            f"choose one of {', '.join('sklearn:' + n for n in SKLEARN_LOADERS)}"
        )
    bunch = loader(as_frame=True)
    return bunch.frame, bunch.target.name


def infer_task(target: pd.Series) -> str:
    """Strings, booleans and integers with few distinct values are labels; the rest is numeric."""
    if not pd.api.types.is_numeric_dtype(target) or pd.api.types.is_bool_dtype(target):
        return "classification"
    if pd.api.types.is_integer_dtype(target) and target.nunique() <= MAX_CLASSES_FOR_AUTO:
        return "classification"
    return "regression"


def make_schema(
    frame: pd.DataFrame, target: str, task: str, weight_column: str | None = None
) -> dict:
    """Describe features, target and classes: everything later stages need besides the rows."""
    features = [
        {"name": str(col), "dtype": str(frame[col].dtype)}
        for col in frame.columns
        if col not in (target, weight_column)
    ]
    schema = {
        "features": features,
        "target": target,
        "task": task,
        "classes": None,
        "weight_column": weight_column,
    }
    if task == "classification":
        schema["classes"] = [plain(v) for v in sorted(frame[target].unique())]
    return schema


def select_target(frame: pd.DataFrame, data: DataParams, default_target: str) -> tuple[str, str]:
    """Return the target column and the task, checking both against the frame."""
    target = data.target or default_target
    if target not in frame.columns:
        raise DataError(
            f"data.target: column `{target}` is not in {data.source}; "
            f"columns are {', '.join(map(str, frame.columns))}"
        )
    task = infer_task(frame[target]) if data.task == "auto" else data.task
    if task == "regression" and not pd.api.types.is_numeric_dtype(frame[target]):
        raise DataError(f"data.task is regression but target `{target}` is not numeric")
    return target, task


def check_weight_column(frame: pd.DataFrame, data: DataParams, target: str) -> None:
    """A sample-weight column must exist, differ from the target and hold numbers >= 0."""
    name = data.weight_column
    if name is None:
        return
    if name not in frame.columns or name == target:
        raise DataError(
            f"data.weight_column: column `{name}` is not a non-target column of {data.source}; "
            f"columns are {', '.join(map(str, frame.columns))}"
        )
    weights = frame[name]
    if not pd.api.types.is_numeric_dtype(weights) or pd.api.types.is_bool_dtype(weights):
        raise DataError(f"data.weight_column `{name}` must be numeric, found {weights.dtype}")
    bad = weights.isna() | (weights < 0)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"data.weight_column `{name}` must be a number >= 0 in every row; "
            f"row {row} (0-based) holds {plain(weights.iloc[row])!r}"
        )


def sample_weights(frame: pd.DataFrame, schema: dict) -> np.ndarray | None:
    name = schema.get("weight_column")
    return None if name is None else frame[name].to_numpy(dtype=np.float32)


def split_frame(
    frame: pd.DataFrame, target: str, task: str, data: DataParams, seed: int
) -> dict[str, pd.DataFrame]:
    """Seeded train/valid/test split, stratified on the target for classification."""
    stratify = frame[target] if task == "classification" else None
    rest, test = train_test_split(
        frame, test_size=data.test_size, stratify=stratify, random_state=seed
    )
    valid_of_rest = data.valid_size / (1 - data.test_size)
    stratify = rest[target] if task == "classification" else None
    train, valid = train_test_split(
        rest, test_size=valid_of_rest, stratify=stratify, random_state=seed
    )
    return {
        name: part.reset_index(drop=True)
        for name, part in zip(SPLITS, (train, valid, test), strict=True)
    }


def feature_names(schema: dict) -> list[str]:
    return [f["name"] for f in schema["features"]]


def features_and_target(frame: pd.DataFrame, schema: dict) -> tuple[np.ndarray, np.ndarray]:
    """The float32 feature matrix in schema order, and the target encoded for Keras."""
    x = frame[feature_names(schema)].to_numpy(dtype=np.float32)
    return x, encode_target(frame[schema["target"]], schema)


def encode_target(target: pd.Series, schema: dict) -> np.ndarray:
    """Class labels become indices into `schema["classes"]`; regression targets become float32."""
    if schema["task"] == "regression":
        return target.to_numpy(dtype=np.float32)
    index = {label: i for i, label in enumerate(schema["classes"])}
    codes = target.map(lambda v: index.get(plain(v), -1)).to_numpy(dtype=np.int64)
    unknown = sorted(set(target[codes < 0].map(plain)))
    if unknown:
        raise DataError(f"target `{schema['target']}` has labels not in the schema: {unknown}")
    return codes


def read_splits(prepared_dir: Path, names: tuple[str, ...] = SPLITS) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(prepared_dir / f"{name}.parquet") for name in names}


def read_schema(prepared_dir: Path) -> dict:
    return json.loads((prepared_dir / SCHEMA_FILE).read_text())
