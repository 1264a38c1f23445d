"""The prepare stage's work: load the data, check it, split it and describe it in a `Schema`.
Imports no TensorFlow."""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn import datasets
from sklearn.model_selection import train_test_split

from mlpipe.params import DataParams
from mlpipe.schema import SPLITS, Feature, Schema
from mlpipe.util.files import plain
from mlpipe.util.tables import DataError, check_finite, read_table, to_numeric

log = logging.getLogger("mlpipe.data")

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
# Values of data.split_column, read case-insensitively.
SPLIT_NAMES = {"train": "train", "valid": "valid", "validation": "valid", "test": "test"}


# Load


def load_source(data: DataParams) -> tuple[pd.DataFrame, str | None]:
    """Load `data.source` as one frame; return it with the dataset's own target, if it has one."""
    if not data.source.startswith("sklearn:"):
        return read_file(data.source, data), None
    name = data.source.removeprefix("sklearn:")
    loader = SKLEARN_LOADERS.get(name)
    if loader is None:
        raise DataError(
            f"data.source: unknown dataset `{data.source}`; "
            f"choose one of {', '.join('sklearn:' + n for n in SKLEARN_LOADERS)}, or a file path"
        )
    bunch = loader(as_frame=True)
    return bunch.frame, bunch.target.name


def load_test_source(data: DataParams) -> pd.DataFrame | None:
    """The user's own test rows, read like `data.source`."""
    return None if data.test_source is None else read_file(data.test_source, data)


def read_file(path: str, data: DataParams) -> pd.DataFrame:
    """A user's file with `data.target_map` applied to the target's text, refused where a
    numeric column holds an infinity (a declared category may hold any text)."""
    relabel = {data.target: data.target_map} if data.target and data.target_map else None
    frame = read_table(path, data.csv, relabel)
    check_finite(frame, path, skip=data.categorical)
    return frame


def align_test(test: pd.DataFrame, frame: pd.DataFrame, schema: Schema, data: DataParams):
    """The test file's columns in the source's order; features, target and weights required."""
    needed = [*schema.feature_names, schema.target]
    needed += [schema.weight_column] if schema.weight_column else []
    missing = [c for c in needed if c not in test.columns]
    if missing:
        raise DataError(
            f"{data.test_source}: columns {missing} are missing; the test file needs the "
            f"feature, target and weight columns of {data.source}"
        )
    return test[[c for c in frame.columns if c in test.columns]]


# Target and task


def infer_task(target: pd.Series) -> str:
    """Strings, booleans and integers with few distinct values are labels; the rest is numeric."""
    if not pd.api.types.is_numeric_dtype(target) or pd.api.types.is_bool_dtype(target):
        return "classification"
    if pd.api.types.is_integer_dtype(target) and target.nunique() <= MAX_CLASSES_FOR_AUTO:
        return "classification"
    return "regression"


def select_target(
    frame: pd.DataFrame, data: DataParams, default_target: str | None
) -> tuple[str, str]:
    """Return the target column and the task, checking both against the frame."""
    target = data.target or default_target
    columns = ", ".join(map(str, frame.columns))
    if target is None:
        raise DataError(
            f"data.target: name the column to predict in {data.source}; columns are {columns}"
        )
    if target not in frame.columns:
        raise DataError(
            f"data.target: column `{target}` is not in {data.source}; columns are {columns}"
        )
    missing = frame[target].isna()
    if missing.any():
        rows = (np.flatnonzero(missing.to_numpy())[:5] + 1).tolist()
        raise DataError(
            f"{data.source}: target `{target}` is missing in {int(missing.sum())} rows "
            f"(rows {rows}...); fill them in or drop those rows"
        )
    task = infer_task(frame[target]) if data.task == "auto" else data.task
    if task == "regression" and not pd.api.types.is_numeric_dtype(frame[target]):
        raise DataError(f"data.task is regression but target `{target}` is not numeric")
    if task == "classification":
        check_classes(frame[target], data)
    how = "inferred from the target" if data.task == "auto" else "from data.task"
    log.info("task: %s (%s `%s`)", task, how, target)
    return target, task


def check_classes(target: pd.Series, data: DataParams) -> None:
    """Two classes at least, each with a row for every split cut from the data."""
    counts = target.value_counts()
    if len(counts) < 2:
        raise DataError(
            f"{data.source}: target `{target.name}` has a single class "
            f"({plain(counts.index[0])!r}); a classifier needs at least two"
        )
    needed = 2 if data.test_source or data.split_column else 3
    rare = counts[counts < needed]
    if len(rare):
        listed = ", ".join(f"{plain(label)!r}: {n}" for label, n in rare.head(10).items())
        more = f" and {len(rare) - 10} more" if len(rare) > 10 else ""
        raise DataError(
            f"{data.source}: target `{target.name}` has {len(rare)} classes with fewer than "
            f"{needed} rows ({listed}{more}); a stratified split needs a row of each class "
            "in train, valid and test. Add rows, merge or drop those classes."
        )


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
            f"row {row + 1} holds {plain(weights.iloc[row])!r}"
        )


# Features


def feature_columns(frame: pd.DataFrame, data: DataParams, target: str) -> list[str]:
    """The feature columns: `data.features.include`, or every column with no other role."""
    named = {
        "data.features.include": data.features.include or [],
        "data.features.exclude": data.features.exclude,
        "data.categorical": data.categorical,
        "data.numeric": data.numeric,
        "data.id_column": [data.id_column] if data.id_column else [],
        "data.split_column": [data.split_column] if data.split_column else [],
    }
    for key, names in named.items():
        absent = [n for n in names if n not in frame.columns]
        if absent:
            raise DataError(
                f"{key}: columns {absent} are not in {data.source}; "
                f"columns are {', '.join(map(str, frame.columns))}"
            )
    roles = {target, data.id_column, data.weight_column, data.split_column}
    chosen = data.features.include or [c for c in frame.columns if c not in roles]
    clash = [c for c in chosen if c in roles]
    if clash:
        raise DataError(
            f"data.features.include: {clash} are the target, id, weight or split column and "
            "cannot be features"
        )
    features = [c for c in chosen if c not in data.features.exclude]
    if not features:
        raise DataError(f"{data.source}: no feature columns are left; check data.features")
    return features


def feature_kind(column: pd.Series, data: DataParams) -> str:
    """`numeric` or `categorical`: the declared kind, else numbers and booleans are numeric."""
    if column.name in data.categorical:
        return "categorical"
    if column.name in data.numeric:
        to_numeric(column, f"{data.source}, data.numeric")  # junk fails here, naming the row
        return "numeric"
    numeric = pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)
    if not numeric:
        numbers = pd.to_numeric(column.dropna(), errors="coerce")
        if len(numbers) and numbers.notna().mean() >= 0.9:
            log.warning(
                "column `%s` is mostly numbers but holds text such as %r: treated as categorical;"
                " list it in data.numeric to fail on such values instead",
                column.name,
                column.dropna()[numbers.isna()].iloc[0],
            )
    return "numeric" if numeric else "categorical"


def input_names(names: list[str]) -> list[str]:
    """Names usable as model inputs and serving-signature arguments, unique, in order."""
    out: list[str] = []
    for name in names:
        base = re.sub(r"[^A-Za-z0-9_]", "_", str(name)).strip("_") or "column"
        if not base[0].isalpha():
            base = f"f_{base}"
        candidate, n = base, 1
        while candidate in out:
            n += 1
            candidate = f"{base}_{n}"
        out.append(candidate)
    return out


def make_schema(
    frame: pd.DataFrame, target: str, task: str, data: DataParams, features: list[str]
) -> Schema:
    """Describe features, target and classes: everything later stages need besides the rows."""
    names = input_names(features)
    classes = None
    if task == "classification":
        classes = tuple(plain(v) for v in sorted(frame[target].unique()))
    return Schema(
        features=tuple(
            Feature(
                name=str(col),
                input=name,
                kind=feature_kind(frame[col], data),
                dtype=str(frame[col].dtype),
            )
            for col, name in zip(features, names, strict=True)
        ),
        target=target,
        task=task,
        classes=classes,
        id_column=data.id_column,
        weight_column=data.weight_column,
        target_scale=data.target_scale,
    )


# Split


def split_frame(
    frame: pd.DataFrame,
    target: str,
    task: str,
    data: DataParams,
    seed: int,
    test: pd.DataFrame | None = None,
) -> dict[str, pd.DataFrame]:
    """Train/valid/test: the data's own split where given, else seeded and stratified on the
    target for classification."""
    if data.split_column:
        splits = _split_by_column(frame, target, task, data, seed)
    elif test is None:
        frame, test = _cut(frame, data.test_size, target, task, seed)
        train, valid = _cut(frame, data.valid_size / (1 - data.test_size), target, task, seed)
        splits = _named(train, valid, test)
    else:
        splits = _named(*_cut(frame, data.valid_size, target, task, seed), test)
    if task == "classification":
        check_unseen_labels(splits, target, data)
    return splits


def check_unseen_labels(splits: dict[str, pd.DataFrame], target: str, data: DataParams) -> None:
    """Refuse test or validation labels that no training row has: the model cannot predict
    them, and evaluate would fail only after training."""
    known = set(splits["train"][target].map(plain))
    for name in ("test", "valid"):
        labels = splits[name][target].map(plain)
        unseen = labels[~labels.isin(known)].value_counts()
        if unseen.empty:
            continue
        if data.test_source and name == "test":
            where = f"{data.test_source}: the test rows"
        elif data.split_column:
            where = f"{data.source}: the {name} rows of data.split_column `{data.split_column}`"
        else:
            where = f"{data.source}: the {name} rows"
        listed = ", ".join(f"{label!r} ({n} rows)" for label, n in unseen.head(10).items())
        more = f" and {len(unseen) - 10} more" if len(unseen) > 10 else ""
        near = _nearest_labels(list(unseen.index[:2]), sorted(known, key=str))
        raise DataError(
            f"{where} have target `{target}` labels that no training row has: {listed}{more}; "
            f"training labels are {sorted(known, key=str)[:20]}. Map them onto training labels "
            f"with data.target_map (e.g. {{{near}}}), or drop those rows"
        )


def _nearest_labels(unseen: list, known: list) -> str:
    """`'>50K.': '>50K'` pairs for the first unseen labels, for a hint."""
    pairs = []
    for label in unseen:
        close = difflib.get_close_matches(str(label), [str(k) for k in known], n=1, cutoff=0)
        pairs.append(f"{str(label)!r}: {close[0]!r}" if close else f"{str(label)!r}: ...")
    return ", ".join(pairs)


def _split_by_column(frame, target, task, data, seed) -> dict[str, pd.DataFrame]:
    labels = frame[data.split_column].map(lambda v: SPLIT_NAMES.get(str(v).strip().lower()))
    unknown = labels.isna()
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise DataError(
            f"{data.source}: data.split_column `{data.split_column}` row {row + 1} holds "
            f"{plain(frame[data.split_column].iloc[row])!r}; use train, valid or test"
        )
    parts = {name: frame[labels == name] for name in SPLITS}
    if parts["test"].empty:
        raise DataError(
            f"{data.source}: data.split_column `{data.split_column}` marks no test rows"
        )
    if parts["valid"].empty:
        parts["train"], parts["valid"] = _cut(parts["train"], data.valid_size, target, task, seed)
    return _named(parts["train"], parts["valid"], parts["test"])


def _cut(frame, share, target, task, seed) -> tuple[pd.DataFrame, pd.DataFrame]:
    stratify = frame[target] if task == "classification" else None
    try:
        return train_test_split(frame, test_size=share, stratify=stratify, random_state=seed)
    except ValueError as err:
        raise DataError(
            f"cannot split {len(frame)} rows stratified by `{target}`: {err}. "
            "Use more rows, fewer classes, or a larger data.test_size / data.valid_size."
        ) from None


def _named(train, valid, test) -> dict[str, pd.DataFrame]:
    parts = (train, valid, test)
    return {name: part.reset_index(drop=True) for name, part in zip(SPLITS, parts, strict=True)}


def prepare(
    frame: pd.DataFrame,
    default_target: str | None,
    data: DataParams,
    seed: int,
    test: pd.DataFrame | None = None,
) -> tuple[dict[str, pd.DataFrame], Schema]:
    """Check the frame against `data`, split it and describe it: the prepare stage's work."""
    target, task = select_target(frame, data, default_target)
    check_weight_column(frame, data, target)
    features = feature_columns(frame, data, target)
    schema = make_schema(frame, target, task, data, features)
    if test is not None:
        test = align_test(test, frame, schema, data)
    if data.target_scale is not None:
        frame = scale_target(frame, schema, data)
        test = None if test is None else scale_target(test, schema, data)
    return split_frame(frame, target, task, data, seed, test), schema


def scale_target(frame: pd.DataFrame, schema: Schema, data: DataParams) -> pd.DataFrame:
    """The regression target divided by `data.target_scale` (e.g. dollars to 100,000s)."""
    if schema.task != "regression":
        raise DataError(
            f"data.target_scale divides a regression target; `{schema.target}` is a "
            "classification target here. Set data.target_scale to null."
        )
    target = schema.target
    return frame.assign(**{target: frame[target].astype(np.float64) / data.target_scale})


# Warnings: suspicious, not fatal


def data_warnings(splits: dict[str, pd.DataFrame], schema: Schema) -> list[str]:
    """Constant columns, rows shared by train and test, features that copy the target."""
    train, test = splits["train"], splits["test"]
    names = schema.feature_names
    warnings = []
    distinct = train[names].nunique(dropna=False) if names else pd.Series(dtype=int)
    constant = [c for c in names if distinct[c] <= 1]
    if constant:
        warnings.append(f"constant in the training split, so useless as features: {constant}")
    shared = int(
        _row_hashes(test, [*names, schema.target])
        .isin(_row_hashes(train, [*names, schema.target]))
        .sum()
    )
    if shared:
        warnings.append(
            f"{shared} test rows also appear, identical, in the training split; the test "
            "score overstates performance on new rows"
        )
    target = train[schema.target]
    target_text = target.astype(str)
    # Only a column with as many distinct values as the target can copy it: compare those.
    alike = [c for c in names if distinct[c] == target.nunique(dropna=False)]
    for name in alike:
        if train[name].equals(target) or train[name].astype(str).equals(target_text):
            warnings.append(f"feature `{name}` is identical to the target: a leak; exclude it")
    return warnings


def _row_hashes(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    """One 64-bit hash per row: comparing rows by hash stays linear in the number of columns,
    where a merge on 2,000 key columns took over a minute."""
    return pd.util.hash_pandas_object(frame[columns], index=False)
