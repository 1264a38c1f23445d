"""What the model is fed: rows turned into its named inputs and targets, and the preprocessing
inside the model, from raw named columns to one dense float matrix.

Everything learned here (medians, means, standard deviations, vocabularies) comes from the
training split only, and is stored in the layers, so the exported model takes raw rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd
import pyarrow as pa
import tensorflow as tf
from keras import ops
from scipy.special import ndtri

from mlpipe.schema import Feature, Schema, encode_target
from mlpipe.stream_stats import ShardStats
from mlpipe.util.tables import DataError, to_categories, to_numeric

PREPROCESS = "preprocess"
# Rows per call when preprocessing whole splits: large, since it is one cheap pass.
TRANSFORM_BATCH = 8192
# Robust scaling's smooth clipping bound (RealMLP's 3).
SMOOTH_CLIP = 3.0
# The quantile encoding: training quantiles at this many + 1 evenly spaced levels, mapped to the
# standard normal's, whose tails are cut at QUANTILE_TAIL (so within +/- 3.09).
QUANTILE_LEVELS = 128
QUANTILE_TAIL = 1e-3


# Rows to model inputs


def model_inputs(
    frame: pd.DataFrame, schema: Schema, where: str = "data", first_row: int = 1
) -> dict[str, np.ndarray]:
    """The model's named inputs: float32 (NaN for missing) or text ("" for missing), (n, 1).
    `first_row` numbers the frame's first row in error messages."""
    missing = [name for name in schema.feature_names if name not in frame.columns]
    if missing:
        raise DataError(f"{where}: missing feature columns {missing}; the model needs them")
    inputs = {}
    for feature in schema.features:
        column = frame[feature.name]
        if feature.kind == "numeric":
            values = numeric_values(column, where, first_row)
        else:
            values = to_categories(column)
        inputs[feature.input] = values.reshape(-1, 1)
    return inputs


def input_matrices(
    frame: pd.DataFrame, schema: Schema, where: str = "data", first_row: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """The values `model_inputs` gives, as two matrices in the schema's order: the numeric
    features, float32 (n, numeric) in column-major order, and the categorical ones, text
    (n, categorical). Two arrays instead of one per column, so that a wide row costs a few
    calls, not one per column."""
    missing = [name for name in schema.feature_names if name not in frame.columns]
    if missing:
        raise DataError(f"{where}: missing feature columns {missing}; the model needs them")
    numeric = [f.name for f in schema.features if f.kind == "numeric"]
    categorical = [f.name for f in schema.features if f.kind == "categorical"]
    dtypes = frame.dtypes  # not frame[name]: a Series per column costs more than the numbers
    typed = all(
        pd.api.types.is_numeric_dtype(dtypes[name]) and not pd.api.types.is_bool_dtype(dtypes[name])
        for name in numeric
    )
    # Column-major: each column's values are contiguous, to be written and read in one pass.
    if typed:  # numbers already (Parquet, JSON): one conversion for the whole block
        numbers = np.asfortranarray(frame[numeric].to_numpy(dtype=np.float32, na_value=np.nan))
    else:
        numbers = np.empty((len(frame), len(numeric)), dtype=np.float32, order="F")
        for i, name in enumerate(numeric):
            numbers[:, i] = numeric_values(frame[name], where, first_row)
    if np.isinf(numbers).any():  # in the file, or beyond float32: `to_numeric` names the row
        for i, name in enumerate(numeric):
            if np.isinf(numbers[:, i]).any():
                to_numeric(frame[name], where, first_row)
    texts = np.empty((len(frame), len(categorical)), dtype=object)
    for i, name in enumerate(categorical):
        texts[:, i] = to_categories(frame[name])
    return numbers, texts


def numeric_values(column: pd.Series, where: str, first_row: int = 1) -> np.ndarray:
    """`tables.to_numeric`, with text that is all numbers parsed by pyarrow: about twenty times
    faster than pandas on the text cells of a CSV file, and to the same float64 values before
    they become float32. Text it refuses (true/false words, junk) goes to `to_numeric`, which
    reads the words and names the bad row."""
    if column.dtype == object or pd.api.types.is_string_dtype(column):
        try:
            numbers = pa.array(column, from_pandas=True).cast(pa.float64())
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            return to_numeric(column, where, first_row)
        return numbers.to_numpy(zero_copy_only=False).astype(np.float32)
    return to_numeric(column, where, first_row)


def inputs_and_target(frame: pd.DataFrame, schema: Schema) -> tuple[dict, np.ndarray]:
    return model_inputs(frame, schema), encode_target(frame[schema.target], schema)


def sample_weights(frame: pd.DataFrame, schema: Schema) -> np.ndarray | None:
    name = schema.weight_column
    return None if name is None else frame[name].to_numpy(dtype=np.float32)


# Preprocessing layers


def impute_standardize(
    x: keras.KerasTensor,
    median: list[float],
    mean: list[float],
    std: list[float],
    clip: float | None,
    smooth_clip: float | None = None,
) -> keras.KerasTensor:
    """Missing values (NaN) become the training median; then (x - mean) / std, clipped; with
    `smooth_clip` s, then x / sqrt(1 + (x / s)^2) (RealMLP's smooth clipping: about x near 0,
    never beyond +/- s).

    Keras operations applied in the functional graph, not a layer of this project: a saved
    model records them as Keras's own, so it loads with plain Keras, without mlpipe.

    A feature that is (nearly) constant in training has a tiny standard deviation; an unseen
    value then standardizes to thousands and swamps the network. Clipping bounds that damage.
    """
    x = ops.where(ops.isnan(x), np.asarray(median, dtype=np.float32), x)
    x = ops.divide(ops.subtract(x, np.asarray(mean, dtype=np.float32)), np.asarray(std, np.float32))
    if clip is not None:
        x = ops.clip(x, -clip, clip)
    if smooth_clip is not None:
        x = ops.divide(x, ops.sqrt(ops.add(ops.square(ops.divide(x, smooth_clip)), 1.0)))
    return x


def quantile_normal(x: keras.KerasTensor, knots: QuantileKnots) -> keras.KerasTensor:
    """Missing values become the training median; then each column goes through the
    piecewise-linear map from its training quantiles to the standard normal's (`knots`):
    z_0 + sum over bins t of clip((x - left_t) / width_t, 0, 1) * rise_t. Values beyond the
    training range stay at the end knots, within +/- 3.09 (QUANTILE_TAIL). Keras operations
    only, as in `impute_standardize`."""
    x = ops.where(ops.isnan(x), np.asarray(knots.median, dtype=np.float32), x)
    bins = ops.divide(ops.subtract(ops.expand_dims(x, -1), knots.left), knots.width)
    rises = ops.multiply(ops.clip(bins, 0.0, 1.0), knots.rise)
    return ops.add(ops.sum(rises, axis=-1), knots.start)


def h5_custom_objects() -> dict[str, type]:
    """What `keras.saving.load_model` needs to read the legacy HDF5 export: that format names
    the operations of `impute_standardize` by class, and Keras looks classes up among layers
    only. The `.keras` file and the SavedModel need nothing."""
    from keras.src.ops import core
    from keras.src.ops import numpy as operations

    return {
        cls.__name__: cls
        for cls in (
            operations.Isnan,
            operations.Where,
            operations.Subtract,
            operations.Divide,
            operations.Clip,
            core.Cast,
        )
    }


def numeric_stats(train: pd.DataFrame | ShardStats, names: list[str]) -> dict[str, list[float]]:
    """Median, and mean and standard deviation after imputation, per column in float64 (one
    column at a time: never a float64 copy of the whole table). Of shards: streamed."""
    if isinstance(train, ShardStats):
        return train.numeric_stats(names)
    stats: dict[str, list[float]] = {"median": [], "mean": [], "std": []}
    for name in names:
        x = to_numeric(train[name], "train split").astype(np.float64)
        present = x[~np.isnan(x)]
        median = float(np.median(present)) if len(present) else 0.0  # missing in every row
        x[np.isnan(x)] = median
        std = float(x.std())
        stats["median"].append(median)
        stats["mean"].append(float(x.mean()))
        # A constant column carries no information: scale it by 1 rather than divide by zero.
        stats["std"].append(std if std > 0 else 1.0)
    return stats


def robust_stats(train: pd.DataFrame | ShardStats, names: list[str]) -> dict[str, list[float]]:
    """`numeric_stats` for robust scaling (RealMLP): centred on the median, scaled by the
    interquartile range; (max - min) / 2 where that is 0, and 1 for a constant column."""
    if isinstance(train, ShardStats):
        return train.robust_stats(names)
    stats: dict[str, list[float]] = {"median": [], "mean": [], "std": []}
    for name in names:
        x = to_numeric(train[name], "train split").astype(np.float64)
        present = x[~np.isnan(x)]
        if not len(present):
            present = np.zeros(1)
        median = float(np.median(present))
        q25, q75 = np.quantile(present, [0.25, 0.75])
        scale = float(q75 - q25) or float(present.max() - present.min()) / 2 or 1.0
        stats["median"].append(median)
        stats["mean"].append(median)
        stats["std"].append(scale)
    return stats


@dataclass(frozen=True)
class QuantileKnots:
    """Per numeric column (rows), the bins of `quantile_normal`, padded to the same number
    (a padding bin rises by 0): left edges, widths and rises, float32 (n, bins); the start z_0
    and the median, (n,)."""

    median: np.ndarray
    start: np.ndarray
    left: np.ndarray
    width: np.ndarray
    rise: np.ndarray


def quantile_knots(train: pd.DataFrame | ShardStats, names: list[str]) -> QuantileKnots:
    """The knots of the map from each column's training quantiles at QUANTILE_LEVELS + 1
    evenly spaced levels to the standard normal's quantiles at those levels, whose tails are
    cut at QUANTILE_TAIL. Quantiles shared by tied values merge into one knot at their mean
    level, so a value that fills 30% of a column maps to the middle of its share."""
    levels = np.linspace(0.0, 1.0, QUANTILE_LEVELS + 1)
    if isinstance(train, ShardStats):
        columns = [np.asarray(q, dtype=np.float64) for q in train.quantiles(names, list(levels))]
    else:
        columns = []
        for name in names:
            x = to_numeric(train[name], "train split").astype(np.float64)
            present = x[~np.isnan(x)]
            columns.append(np.quantile(present, levels) if len(present) else np.zeros(1))
    median, start, left, width, rise = [], [], [], [], []
    for quantiles in columns:
        if len(quantiles) != len(levels):  # missing in every row: 0, the median level
            quantiles = np.zeros(len(levels))
        edges, which = np.unique(quantiles, return_inverse=True)
        mean_level = np.bincount(which, levels) / np.bincount(which)
        z = ndtri(np.clip(mean_level, QUANTILE_TAIL, 1 - QUANTILE_TAIL))
        median.append(quantiles[QUANTILE_LEVELS // 2])
        start.append(z[0])
        left.append(edges[:-1])
        width.append(np.diff(edges))
        rise.append(np.diff(z))
    bins = max(len(edges) for edges in left) or 1

    def padded(rows: list[np.ndarray], fill: float) -> np.ndarray:
        """(columns, bins) float32; a padding bin rises by 0."""
        return np.array(
            [np.pad(row, (0, bins - len(row)), constant_values=fill) for row in rows],
            dtype=np.float32,
        ).reshape(len(rows), bins)

    return QuantileKnots(
        median=np.array(median, dtype=np.float32),
        start=np.array(start, dtype=np.float32),
        left=padded(left, 0.0),
        width=padded(width, 1.0),
        rise=padded(rise, 0.0),
    )


def vocabulary(train: pd.DataFrame | ShardStats, name: str) -> list[str]:
    """Categories seen in training, most frequent first (ties by text), missing ("") included
    when it occurs, since missingness itself can carry signal."""
    if isinstance(train, ShardStats):
        return train.vocabulary(name)
    counts = pd.Series(to_categories(train[name])).value_counts()
    return sorted(counts.index, key=lambda v: (-counts[v], v))


def input_layer(feature: Feature) -> keras.KerasTensor:
    dtype = "float32" if feature.kind == "numeric" else "string"
    return keras.Input(shape=(1,), dtype=dtype, name=feature.input)


def build_preprocessor(
    schema: Schema,
    train: pd.DataFrame | ShardStats,
    clip: float | None,
    paths: dict[str, list[str]] | None = None,
    numeric: str = "standardize",
    categorical: str = "one_hot",
) -> keras.Model:
    """A model from the named raw inputs to one float32 matrix: numeric columns imputed,
    standardized and clipped, categorical columns one-hot encoded with a bucket for unseen
    values.

    `numeric` "robust" scales by the median and interquartile range and clips smoothly
    instead, "quantile" maps the training quantiles to the normal's (the network's periodic
    embeddings read one of these); `categorical` "embedding" gives
    each categorical column as one number, its index (0 unseen, then the vocabulary, missing
    always included), for the network's embeddings. Numeric columns come first.

    With `paths` ({"wide": [columns], "deep": [columns]}) it outputs one matrix per path
    instead, each encoded by its own layers, prefixed with the path's name."""
    inputs = {f.input: input_layer(f) for f in schema.features}
    if paths is None:
        encoded = encode(schema.features, inputs, train, clip, "", numeric, categorical)
        return keras.Model(inputs, encoded, name=PREPROCESS)
    outputs = {
        path: encode(
            [f for f in schema.features if f.name in names], inputs, train, clip, f"{path}_"
        )
        for path, names in paths.items()
    }
    return keras.Model(inputs, outputs, name=PREPROCESS)


def encode(
    features: Sequence[Feature],
    inputs: dict[str, keras.KerasTensor],
    train: pd.DataFrame | ShardStats,
    clip: float | None,
    prefix: str = "",
    numeric_encoding: str = "standardize",
    categorical_encoding: str = "one_hot",
) -> keras.KerasTensor:
    """The encoding layers of `features`, learned on `train`, applied to their inputs."""
    numeric = [f for f in features if f.kind == "numeric"]
    parts = []
    if numeric:
        joined = (
            keras.layers.Concatenate(name=f"{prefix}numeric")([inputs[f.input] for f in numeric])
            if len(numeric) > 1
            else inputs[numeric[0].input]
        )
        names = [f.name for f in numeric]
        if numeric_encoding == "quantile":
            parts.append(quantile_normal(joined, quantile_knots(train, names)))
        else:
            if numeric_encoding == "standardize":
                stats, smooth = numeric_stats(train, names), None
            else:  # robust
                stats, clip, smooth = robust_stats(train, names), None, SMOOTH_CLIP
            parts.append(
                impute_standardize(
                    joined, stats["median"], stats["mean"], stats["std"], clip, smooth
                )
            )
    for feature in features:
        if feature.kind != "categorical":
            continue
        words = vocabulary(train, feature.name)
        if categorical_encoding == "embedding":
            # Missing keeps its own slot even when training never saw it.
            lookup = keras.layers.StringLookup(
                vocabulary=words if "" in words else [*words, ""],
                num_oov_indices=1,
                output_mode="int",
                name=f"{prefix}lookup_{feature.input}",
            )
            parts.append(ops.cast(lookup(inputs[feature.input]), "float32"))
            continue
        lookup = keras.layers.StringLookup(
            vocabulary=words,
            num_oov_indices=1,
            output_mode="one_hot",
            name=f"{prefix}lookup_{feature.input}",
        )
        parts.append(lookup(inputs[feature.input]))
    if len(parts) == 1:
        return parts[0]
    return keras.layers.Concatenate(name=f"{prefix}features")(parts)


def tensors(inputs: dict[str, np.ndarray]) -> dict[str, tf.Tensor]:
    """Named inputs as tensors; text columns become tf.string, which Keras cannot take from
    NumPy object arrays directly."""
    return {
        name: tf.constant(values.astype(np.str_) if values.dtype == object else values)
        for name, values in inputs.items()
    }


def dataset(inputs: dict[str, np.ndarray], batch_size: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(tensors(inputs)).batch(batch_size)


def predict(
    model: keras.Model, inputs: dict[str, np.ndarray], batch_size: int
) -> np.ndarray | dict[str, np.ndarray]:
    """The model's predictions: an array, or one per output name for several outputs."""
    return model.predict(dataset(inputs, batch_size), verbose=0)


def transform(
    preprocessor: keras.Model, frame: pd.DataFrame, schema: Schema
) -> tf.Variable | dict[str, tf.Variable]:
    """The float32 feature matrix the core trains on (one per path for a Wide & Deep core),
    computed once per split.

    Chunk by chunk, into a variable that owns the only copy: tf.data captures a variable by
    reference, where it would copy a tensor into its graph, and reading rows of a variable whose
    buffer nothing else shares copies nothing. No float64 or per-column copy of the whole table
    is made either. Peak memory is about twice the feature matrix, while the chunks are joined.
    """
    parts = []
    for start in range(0, max(len(frame), 1), TRANSFORM_BATCH):
        chunk = model_inputs(frame.iloc[start : start + TRANSFORM_BATCH], schema)
        parts.append(preprocessor(tensors(chunk), training=False))
    joined = tf.nest.map_structure(lambda *chunks: tf.concat(chunks, axis=0), *parts)
    del parts
    return tf.nest.map_structure(lambda matrix: tf.Variable(matrix, trainable=False), joined)


def to_numpy(matrices: tf.Variable | dict[str, tf.Variable]) -> np.ndarray | dict[str, np.ndarray]:
    """NumPy copies of what `transform` returns."""
    return tf.nest.map_structure(lambda matrix: matrix.numpy(), matrices)


def matrices(
    preprocessor: keras.Model, splits: dict[str, pd.DataFrame], schema: Schema
) -> dict[str, tuple[tf.Variable | dict[str, tf.Variable], np.ndarray]]:
    """(features, encoded target) per split, as the core trains and validates on them."""
    return {
        name: (
            transform(preprocessor, frame, schema),
            encode_target(frame[schema.target], schema),
        )
        for name, frame in splits.items()
    }
