"""Model construction from params and the data schema."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from mlpipe import MlpipeError
from mlpipe.config import ModelParams


def output_layer(schema: dict) -> keras.layers.Dense:
    """Softmax over classes, one sigmoid unit for two classes, one linear unit for regression."""
    if schema["task"] == "regression":
        return keras.layers.Dense(1, name="output")
    n_classes = len(schema["classes"])
    if n_classes == 2:
        return keras.layers.Dense(1, activation="sigmoid", name="output")
    return keras.layers.Dense(n_classes, activation="softmax", name="output")


def clip_layers(limit: float) -> list[keras.layers.Layer]:
    """Clip to [-limit, limit] with built-in layers only, so the saved model needs no mlpipe.

    A feature that is (nearly) constant in training has a tiny standard deviation; an unseen
    value then standardizes to thousands and swamps the network. Clipping bounds that damage.
    """
    return [
        keras.layers.Rescaling(1 / limit, name="clip_scale_down"),
        keras.layers.Activation("hard_tanh", name="clip"),
        keras.layers.Rescaling(limit, name="clip_scale_up"),
    ]


def build_model(cfg: ModelParams, schema: dict, x_train: np.ndarray) -> keras.Model:
    """A Sequential MLP whose first layer standardises features with training-split statistics."""
    normalization = keras.layers.Normalization(name="normalization")
    normalization.adapt(x_train)
    layers: list[keras.layers.Layer] = [
        keras.Input(shape=(len(schema["features"]),), name="features"),
        normalization,
    ]
    if cfg.clip_inputs is not None:
        layers += clip_layers(cfg.clip_inputs)
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
    return keras.Sequential(layers, name="mlp")


def summary_text(model: keras.Model) -> str:
    """Layers, output shapes and parameter counts as a plain table that diffs well in git."""
    rows = [("Layer", "Type", "Output shape", "Params")]
    for layer in model.layers:
        try:
            shape = str(tuple(layer.output.shape))
        except (AttributeError, ValueError):  # layers of subclassed models have no fixed output
            shape = "?"
        rows.append((layer.name, type(layer).__name__, shape, f"{layer.count_params():,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f'Model: "{model.name}" ({type(model).__name__})']
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
    """Load a `.keras` file, turning a missing or foreign file into an actionable error."""
    path = Path(path)
    if not path.is_file():
        raise MlpipeError(f"{path}: model file not found; run the stage that produces it")
    try:
        return keras.models.load_model(path)
    except Exception as err:  # Keras raises many types for a file it cannot read
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
