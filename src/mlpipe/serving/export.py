"""Export a trained model for serving, with the metadata that says what it takes and where it
came from: the export stage's operation, `export_model`."""

from __future__ import annotations

import importlib.metadata
import logging
import platform
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

import mlpipe
from mlpipe import MlpipeError
from mlpipe.features import model_inputs, numeric_stats, vocabulary
from mlpipe.modeling.models import (
    main_output,
    output_names,
    plain_model,
    save_model,
    split_model,
)
from mlpipe.params import ExportParams, Params, params_hash
from mlpipe.schema import Schema
from mlpipe.serving.metadata import (
    CLASSES,
    PREDICTED_CLASS,
    PREDICTIONS,
    SCORES,
    ExportMetadata,
    LearnedFeature,
    write_metadata,
)
from mlpipe.stream_stats import ShardStats
from mlpipe.util import reproducible
from mlpipe.util.files import file_sha256
from mlpipe.util.paths import (
    H5_FILE,
    KERAS_FILE,
    METADATA_FILE,  # noqa: F401  (stages/export.py writes it)
    ONNX_FILE,
    SAVED_MODEL_DIR,
    SAVED_MODEL_VERSION,
)
from mlpipe.util.shards import ShardedSplit

ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-4
# Rows a converted format must predict like the Keras model
CHECK_ROWS = 256
# The params that shape the trained model; their hash identifies it.
MODEL_SECTIONS = ("seed", "data", "model", "train")
log = logging.getLogger("mlpipe.export")

LIBRARIES = ("keras", "numpy", "pandas", "scikit-learn", "dvc")


def library_versions() -> dict[str, str]:
    # TensorFlow's own version: the installed distribution may be tensorflow or tensorflow-cpu
    versions = {
        "python": platform.python_version(),
        "mlpipe": mlpipe.__version__,
        "tensorflow": tf.__version__,
    }
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def export_model(
    model: keras.Model,
    schema: Schema,
    params: Params,
    train_file: Path | ShardedSplit,
    out: Path,
    test: pd.DataFrame | None = None,
) -> ExportMetadata:
    """Write the formats `params.export` asks for and metadata.json into the folder `out`.

    `train_file` is the training split the model was trained on: hashed, and the source of the
    medians and categories recorded. A converted format (ONNX) is checked on the first
    CHECK_ROWS rows of `test`.
    """
    meta = metadata(schema, params, train_file, model)
    sample = None if test is None else model_inputs(test.head(CHECK_ROWS), schema)
    write_formats(model, schema, params.export, out, sample)
    write_metadata(out, meta)
    return meta


def formats(export: ExportParams) -> tuple[str, ...]:
    return (*export.formats, *["onnx"] * export.onnx, *["h5"] * export.h5)


def learned_features(
    schema: Schema, train: pd.DataFrame | ShardStats
) -> tuple[LearnedFeature, ...]:
    """The schema's features with the training medians and categories the preprocessing holds."""
    numeric = [f.name for f in schema.features if f.kind == "numeric"]
    medians = dict(zip(numeric, numeric_stats(train, numeric)["median"], strict=True))
    return tuple(
        LearnedFeature(**feature.model_dump(), median=medians[feature.name])
        if feature.kind == "numeric"
        else LearnedFeature(**feature.model_dump(), categories=vocabulary(train, feature.name))
        for feature in schema.features
    )


def metadata(
    schema: Schema, params: Params, train_file: Path | ShardedSplit, model: keras.Model
) -> ExportMetadata:
    """The schema, extended with what serving needs besides the model (what was learned of the
    features, how to read files, the outputs) and with where the model came from. Training
    shards are streamed (`ShardStats`) and hashed together."""
    if isinstance(train_file, ShardedSplit):
        train: pd.DataFrame | ShardStats = ShardStats(train_file)
        digest = train_file.sha256()
    else:
        train, digest = pd.read_parquet(train_file), file_sha256(train_file)
    return ExportMetadata(
        **schema.model_dump(exclude={"features"}),
        features=learned_features(schema, train),
        api=params.model.api,
        outputs=tuple(output_names(split_model(model)[1])),
        csv=params.data.csv,
        formats=formats(params.export),
        versions=library_versions(),
        params_sha256=params_hash(params, MODEL_SECTIONS),
        params_sections=MODEL_SECTIONS,
        train_data_sha256=digest,
    )


def write_formats(
    model: keras.Model,
    schema: Schema,
    export: ExportParams,
    out: Path,
    sample: dict[str, np.ndarray] | None = None,
) -> None:
    """Write each requested format of `model` into `out`, made of Keras's own layers and
    operations (`plain_model`: a subclassed core as the Functional network it runs), so that
    the `.keras` file loads with plain Keras.

    `sample` (named raw inputs) is what the ONNX file is checked on, in onnxruntime.
    """
    model = plain_model(model)
    if "keras" in export.formats:
        save_model(model, out / KERAS_FILE)
    if "saved_model" in export.formats:
        write_saved_model(model, schema, out / SAVED_MODEL_DIR / str(SAVED_MODEL_VERSION))
    if export.onnx:
        write_onnx(model, out / ONNX_FILE)
        if sample is not None:
            check_onnx(model, out / ONNX_FILE, sample)
    if export.h5:
        log.warning(
            "writing %s: HDF5 is Keras's legacy format, for older tools only; "
            "prefer %s or the SavedModel",
            H5_FILE,
            KERAS_FILE,
        )
        model.save(out / H5_FILE)


def write_saved_model(model: keras.Model, schema: Schema, folder: Path) -> None:
    """A SavedModel for TF Serving in `folder` (a version folder): its `serve` signature, also
    `serving_default`, takes the raw columns by name and gives the main output's predictions
    under names. Classification: `scores` (n, classes), the probability of each class,
    `classes` (n, classes), the class names as text (TF Estimator's convention), and
    `predicted_class` (n,), the most probable; regression: `predictions` (n,)."""
    import tensorflow as tf

    names = None if schema.classes is None else tf.constant([str(c) for c in schema.classes])

    def serve(inputs):
        raw = main_output(model(inputs, training=False))
        if names is None:
            return {PREDICTIONS: tf.reshape(raw, [-1])}
        scores = tf.concat([1 - raw, raw], axis=1) if raw.shape[-1] == 1 else raw
        return {
            SCORES: scores,
            CLASSES: tf.tile(names[tf.newaxis, :], [tf.shape(scores)[0], 1]),
            PREDICTED_CLASS: tf.gather(names, tf.argmax(scores, axis=1)),
        }

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve, input_signature=[signature(model)])
    with reproducible.sorted_export_variables():
        archive.write_out(folder, verbose=False)
    reproducible.normalize_saved_model(folder)


def signature(model: keras.Model) -> dict:
    """The model's named inputs as TensorSpecs: float32 numbers, strings for categories."""
    import tensorflow as tf

    inputs = model.input if isinstance(model.input, dict) else {t.name: t for t in model.inputs}
    return {
        name: tf.TensorSpec((None, *t.shape[1:]), tf.as_dtype(t.dtype), name=name)
        for name, t in inputs.items()
    }


def write_onnx(model: keras.Model, path: Path) -> None:
    """The model as ONNX, with its main output only: tf2onnx names several outputs after the
    layer that holds them (`core`, `core_1`), so which is which could not be told."""
    import tf2onnx

    model = keras.Model(model.input, main_output(model.output), name=model.name)
    tf2onnx.convert.from_keras(
        model, input_signature=[signature(model)], opset=ONNX_OPSET, output_path=str(path)
    )


def onnx_predict(path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {
        i.name: inputs[i.name].astype(np.str_) if inputs[i.name].dtype == object else inputs[i.name]
        for i in session.get_inputs()
    }
    return session.run(None, feed)[0]


def check_onnx(model: keras.Model, path: Path, sample: dict[str, np.ndarray]) -> None:
    """Refuse an ONNX file whose predictions differ from the Keras model's."""
    from mlpipe.features import predict

    expected = main_output(predict(model, sample, 256))
    got = onnx_predict(path, sample)
    worst = float(np.max(np.abs(got - expected)))
    if not worst <= ONNX_TOLERANCE:
        raise MlpipeError(
            f"{path.name}: onnxruntime's predictions differ from Keras's by up to {worst:.3g} "
            f"(tolerance {ONNX_TOLERANCE}); the conversion is not faithful, set export.onnx false"
        )
    log.info("%s checked in onnxruntime: max difference %.2g", path.name, worst)
