"""Model construction from params and the data schema."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd

from mlpipe import MlpipeError
from mlpipe.config import ModelParams
from mlpipe.features import PREPROCESS, build_preprocessor

CORE = "core"


def output_layer(schema: dict) -> keras.layers.Dense:
    """Softmax over classes, one sigmoid unit for two classes, one linear unit for regression."""
    if schema["task"] == "regression":
        return keras.layers.Dense(1, name="output")
    n_classes = len(schema["classes"])
    if n_classes == 2:
        return keras.layers.Dense(1, activation="sigmoid", name="output")
    return keras.layers.Dense(n_classes, activation="softmax", name="output")


def build_core(cfg: ModelParams, schema: dict, n_features: int) -> keras.Model:
    """The trainable MLP on the preprocessed feature matrix."""
    layers: list[keras.layers.Layer] = [keras.Input(shape=(n_features,), name="features")]
    for i, units in enumerate(cfg.hidden_units, start=1):
        layers.append(
            keras.layers.Dense(
                units,
                activation=cfg.activation,
                kernel_initializer=cfg.kernel_initializer,
                kernel_regularizer=keras.regularizers.L2(cfg.l2) if cfg.l2 else None,
                name=f"hidden_{i}",
            )
        )
        if cfg.batch_norm:
            layers.append(keras.layers.BatchNormalization(name=f"batch_norm_{i}"))
        if cfg.dropout > 0:
            layers.append(keras.layers.Dropout(cfg.dropout, name=f"dropout_{i}"))
    layers.append(output_layer(schema))
    return keras.Sequential(layers, name=CORE)


def compose(preprocessor: keras.Model, core: keras.Model) -> keras.Model:
    """One model from raw named columns to predictions, as it is saved and served."""
    inputs = {name: keras.Input(**_input_spec(t)) for name, t in _named_inputs(preprocessor)}
    return keras.Model(inputs, core(preprocessor(inputs)), name="mlp")


def build_model(cfg: ModelParams, schema: dict, train: pd.DataFrame) -> keras.Model:
    """Preprocessing adapted on the training split, then a Sequential MLP."""
    preprocessor = build_preprocessor(schema, train, cfg.clip_inputs)
    core = build_core(cfg, schema, preprocessor.output.shape[-1])
    return compose(preprocessor, core)


def split_model(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """The (preprocessor, core) pair inside a model made by `compose`."""
    try:
        return model.get_layer(PREPROCESS), model.get_layer(CORE)
    except ValueError:
        raise MlpipeError(
            f"model `{model.name}` was not built by this project's build stage (it has no "
            f"`{PREPROCESS}` and `{CORE}` parts); rerun `dvc repro`"
        ) from None


def _named_inputs(model: keras.Model) -> list[tuple[str, keras.KerasTensor]]:
    inputs = model.input
    if isinstance(inputs, dict):
        return list(inputs.items())
    return [(t.name, t) for t in model.inputs]


def _input_spec(tensor: keras.KerasTensor) -> dict:
    return {"shape": tensor.shape[1:], "dtype": tensor.dtype, "name": tensor.name}


def _rows(model: keras.Model, prefix: str = "") -> list[tuple[str, str, str, str]]:
    rows = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model) and not prefix:
            rows += _rows(layer, f"{layer.name}/")
            continue
        try:
            shape = str(tuple(layer.output.shape))
        except (AttributeError, ValueError):  # layers of subclassed models have no fixed output
            shape = "?"
        rows.append((prefix + layer.name, type(layer).__name__, shape, f"{layer.count_params():,}"))
    return rows


def summary_text(model: keras.Model) -> str:
    """Inputs, then layers with output shapes and parameter counts, as a plain table that
    diffs well in git. Nested models (preprocess, core) are listed layer by layer."""
    dtypes = [t.dtype for t in model.inputs]
    rows = [("Layer", "Type", "Output shape", "Params"), *_rows(model)]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        f'Model: "{model.name}" ({type(model).__name__})',
        f"Inputs: {len(dtypes)} named columns ({dtypes.count('float32')} numeric, "
        f"{dtypes.count('string')} categorical)",
    ]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:3], widths, strict=False)]
        lines.append("  ".join([*cells, row[3].rjust(widths[3])]).rstrip())
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    total = model.count_params()
    lines.append(
        f"Total params: {total:,} (trainable {trainable:,}, non-trainable {total - trainable:,})"
    )
    return "\n".join(lines) + "\n"


def load_model(path: str | Path) -> keras.Model:
    """Load a `.keras` file in Keras's safe mode, turning a missing, foreign or unsafe file into
    an actionable error. Nothing is unpickled: a `.keras` file is a config and HDF5 weights."""
    path = Path(path)
    if not path.is_file():
        raise MlpipeError(f"{path}: model file not found; run the stage that produces it")
    if path.suffix != ".keras":
        raise MlpipeError(
            f"{path}: only `.keras` model files are loaded (they cannot run arbitrary code); "
            "export the model with `model.save('model.keras')`"
        )
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except Exception as err:  # Keras raises many types for a file it cannot read
        if "safe_mode" in str(err) or "Lambda" in str(err):
            raise MlpipeError(
                f"{path}: refused: the model contains code (a Lambda layer or similar) that "
                "would run on loading. Only models made of serializable layers are loaded."
            ) from err
        raise MlpipeError(
            f"{path}: not a Keras model this project can load ({type(err).__name__}: {err}); "
            "rerun `dvc repro` to rebuild it"
        ) from err


def save_model(model: keras.Model, path: str | Path) -> None:
    """Save as `.keras` through a temporary sibling, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    try:
        model.save(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
