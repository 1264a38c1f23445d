"""Export a trained model for serving, with the metadata that says where it came from."""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import subprocess
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

import mlpipe
from mlpipe import MlpipeError
from mlpipe.features import feature_summary
from mlpipe.modeling.models import main_output, output_names, save_model, split_model
from mlpipe.params import ExportParams, Params, params_hash
from mlpipe.util.files import file_sha256

KERAS_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
METADATA_FILE = "metadata.json"
ONNX_FILE = "model.onnx"
H5_FILE = "model.h5"
ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-4
# The params that shape the trained model; their hash identifies it.
MODEL_SECTIONS = ("seed", "data", "model", "train")
log = logging.getLogger("mlpipe.export")

LIBRARIES = ("tensorflow", "keras", "numpy", "pandas", "scikit-learn", "dvc")


def git_commit(cwd: Path | None = None) -> str | None:
    """HEAD's commit, suffixed `-dirty` when tracked files differ from it; None outside git."""
    try:
        run: dict[str, Any] = dict(cwd=cwd, capture_output=True, text=True, check=True)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], **run).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "mlpipe": mlpipe.__version__}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def metadata(schema: dict, params: Params, train_file: Path, model: keras.Model) -> dict:
    """What serving needs besides the model (features, how to read files, classes, outputs)
    and where the model came from."""
    return {
        "features": feature_summary(schema, pd.read_parquet(train_file)),
        "target": schema["target"],
        "target_scale": schema.get("target_scale"),
        "task": schema["task"],
        "classes": schema["classes"],
        "api": params.model.api,
        "outputs": output_names(split_model(model)[1]),
        "id_column": schema.get("id_column"),
        "csv": params.data.csv.model_dump(),
        "formats": list(params.export.formats)
        + ["onnx"] * params.export.onnx
        + ["h5"] * params.export.h5,
        "versions": library_versions(),
        "git_commit": git_commit(),
        "params_sha256": params_hash(params, MODEL_SECTIONS),
        "params_sections": list(MODEL_SECTIONS),
        "train_data_sha256": file_sha256(train_file),
    }


def write_formats(
    model: keras.Model,
    export: ExportParams,
    out: Path,
    sample: dict[str, np.ndarray] | None = None,
) -> None:
    """Write each requested format of `model` into `out`. A subclassed core is stored in the
    `.keras` file through its registration (config and weights), so it loads without code.

    `sample` (named raw inputs) is what the ONNX file is checked on, in onnxruntime.
    """
    if "keras" in export.formats:
        save_model(model, out / KERAS_FILE)
    if "saved_model" in export.formats:
        model.export(out / SAVED_MODEL_DIR, format="tf_saved_model", verbose=False)
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
