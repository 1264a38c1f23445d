"""Model construction from params and the data schema, in Keras's three APIs, and the model
folder in which the stages pass a model on.

Every model is `compose(preprocessor, core)`: raw named columns in, predictions out. The core,
the trainable part, is a Sequential stack, a Functional Wide & Deep network, or the subclassed
`WideAndDeepModel` (`model.api`).
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from mlpipe import MlpipeError
from mlpipe.features import PREPROCESS, build_preprocessor
from mlpipe.modeling.encodings import build_tabular_core
from mlpipe.modeling.networks import (
    AUX,
    DEEP,
    MAIN,
    WIDE,
    WideAndDeepModel,
    hidden_layers,
    output_spec,
)
from mlpipe.params import ModelParams
from mlpipe.schema import Schema, encode_target
from mlpipe.stream_stats import ShardStats
from mlpipe.util import files, reproducible
from mlpipe.util.paths import CORE_CONFIG_FILE, CORE_WEIGHTS_FILE, KERAS_FILE, PREPROCESS_FILE

CORE = "core"
# The encodings and ensemble size of the plain Sequential MLP.
PLAIN = ("standardize", "one_hot", 1)
HIDDEN_SETTINGS = (
    "hidden_units",
    "activation",
    "kernel_initializer",
    "l2",
    "dropout",
    "batch_norm",
)


def output_layer(schema: Schema, name: str = "output") -> keras.layers.Dense:
    """Softmax over classes, one sigmoid unit for two classes, one linear unit for regression."""
    units, activation = output_spec(schema)
    return keras.layers.Dense(units, activation=activation, name=name)


def _hidden(cfg: ModelParams) -> list[keras.layers.Layer]:
    return hidden_layers(**cfg.model_dump(include=set(HIDDEN_SETTINGS)))


def build_core(
    cfg: ModelParams,
    schema: Schema,
    n_features: int,
    rescale: keras.layers.Rescaling | None = None,
) -> keras.Model:
    """Sequential API: the MLP on the preprocessed feature matrix."""
    layers = [keras.Input(shape=(n_features,), name="features"), *_hidden(cfg)]
    layers.append(output_layer(schema))
    if rescale is not None:
        layers.append(rescale)
    return keras.Sequential(layers, name=CORE)


def target_rescaling(
    cfg: ModelParams, schema: Schema, train: pd.DataFrame | ShardStats
) -> keras.layers.Rescaling | None:
    """With `model.standardize_target`, the layer after the output unit that maps the
    standardized prediction back to the target: y = z * std + mean, from the training split.
    The network then learns (y - mean) / std, whatever the target's unit. Classification is
    left as it is."""
    if not cfg.standardize_target or schema.task != "regression":
        return None  # a class probability has no unit to take out
    if isinstance(train, ShardStats):  # exact, in one streaming pass; a target is never missing
        stats = train.numeric_stats([schema.target])
        mean, std = stats["mean"][0], stats["std"][0]
    else:
        y = encode_target(train[schema.target], schema).astype(np.float64)
        mean, std = float(y.mean()), float(y.std()) or 1.0
    return keras.layers.Rescaling(scale=std, offset=mean, name="target")


def build_functional_core(cfg: ModelParams, schema: Schema, widths: dict[str, int]) -> keras.Model:
    """Functional API: Wide & Deep (Cheng et al. 2016). Two inputs; the deep one goes through the
    hidden layers, the wide one joins it before the main output; with `aux_output`, a second
    output on the deep path."""
    wide = keras.Input(shape=(widths[WIDE],), name=WIDE)
    deep = keras.Input(shape=(widths[DEEP],), name=DEEP)
    z = deep
    for layer in _hidden(cfg):
        z = layer(z)
    joined = keras.layers.Concatenate(name="wide_and_deep")([wide, z])
    main = output_layer(schema, MAIN)(joined)
    outputs = {MAIN: main, AUX: output_layer(schema, AUX)(z)} if cfg.aux_output else main
    return keras.Model({WIDE: wide, DEEP: deep}, outputs, name=CORE)


def build_subclass_core(cfg: ModelParams, schema: Schema) -> WideAndDeepModel:
    """Subclassing API: the WideAndDeepModel, with its residual blocks."""
    units, activation = output_spec(schema)
    return WideAndDeepModel(
        **cfg.model_dump(include=set(HIDDEN_SETTINGS)),
        output_units=units,
        output_activation=activation,
        residual_blocks=cfg.residual_blocks,
        aux_output=cfg.aux_output,
        name=CORE,
    )


def feature_paths(cfg: ModelParams, schema: Schema) -> dict[str, list[str]]:
    """The features of the wide and of the deep path, in the schema's order, checked against
    the data: every column named must be a feature, and every feature must be on a path."""
    names = schema.feature_names
    paths = {}
    for path, chosen in ((WIDE, cfg.wide_columns), (DEEP, cfg.deep_columns)):
        unknown = [c for c in chosen or [] if c not in names]
        if unknown:
            raise MlpipeError(
                f"model.{path}_columns: {', '.join(f'`{c}`' for c in unknown)} is not a feature "
                f"column of the data (the target is `{schema.target}`); the features are "
                f"{', '.join(names)}"
            )
        paths[path] = names if chosen is None else [n for n in names if n in chosen]
    unused = [n for n in names if n not in paths[WIDE] and n not in paths[DEEP]]
    if unused:
        raise MlpipeError(
            f"model.wide_columns, model.deep_columns: features {unused} are on neither path; "
            "add them to one, or leave them out of the data with data.features.exclude"
        )
    return paths


def compose(preprocessor: keras.Model, core: keras.Model) -> keras.Model:
    """One model from raw named columns to predictions, as it is saved and served."""
    inputs = {name: keras.Input(**_input_spec(t)) for name, t in _named_inputs(preprocessor)}
    return keras.Model(inputs, core(preprocessor(inputs)), name="mlp")


def build_model(cfg: ModelParams, schema: Schema, train: pd.DataFrame | ShardStats) -> keras.Model:
    """Preprocessing adapted on the training split, then the core in the API of `model.api`.

    The Sequential core reads one feature matrix; the other two read a wide and a deep one,
    each with its own imputation, standardization and encoding."""
    if cfg.api == "sequential":
        # Periodic embeddings are in the network; the preprocessor scales what they read.
        scaling = cfg.periodic.scaling if cfg.numeric_encoding == "periodic" else None
        preprocessor = build_preprocessor(
            schema,
            train,
            cfg.clip_inputs,
            None,
            scaling or cfg.numeric_encoding,
            cfg.categorical_encoding,
        )
        width = preprocessor.output.shape[-1]
        rescale = target_rescaling(cfg, schema, train)
        if (cfg.numeric_encoding, cfg.categorical_encoding, cfg.ensemble_size) == PLAIN:
            core = build_core(cfg, schema, width, rescale)
        else:
            n_numeric = sum(f.kind == "numeric" for f in schema.features)
            slots = None
            if cfg.categorical_encoding == "embedding":
                slots = [
                    preprocessor.get_layer(f"lookup_{f.input}").vocabulary_size()
                    for f in schema.features
                    if f.kind == "categorical"
                ]
            core = build_tabular_core(cfg, schema, width, n_numeric, slots, rescale)
        return compose(preprocessor, core)
    preprocessor = build_preprocessor(schema, train, cfg.clip_inputs, feature_paths(cfg, schema))
    if cfg.api == "functional":
        widths = {path: t.shape[-1] for path, t in preprocessor.output.items()}
        return compose(preprocessor, build_functional_core(cfg, schema, widths))
    return compose(preprocessor, build_subclass_core(cfg, schema))


def plain_model(model: keras.Model) -> keras.Model:
    """`model` made of Keras's own layers and operations only, so that its saved file loads with
    plain Keras, without mlpipe. A subclassed core becomes the Functional network its `call()`
    runs, with its weights (residual blocks unrolled into their dense layers and an `Add`); the
    other APIs already are."""
    preprocessor, core = split_model(model)
    if not isinstance(core, WideAndDeepModel):
        return model
    widths = {path: t.shape[-1] for path, t in preprocessor.output.items()}
    wide = keras.Input(shape=(widths[WIDE],), name=WIDE)
    deep = keras.Input(shape=(widths[DEEP],), name=DEEP)
    pairs: list[tuple[keras.layers.Layer, keras.layers.Layer]] = []

    def copy(layer: keras.layers.Layer, name: str | None = None) -> keras.layers.Layer:
        twin = type(layer).from_config({**layer.get_config(), "name": name or layer.name})
        pairs.append((layer, twin))
        return twin

    z = deep
    for layer in core.hidden:
        z = copy(layer)(z)
    for block in core.blocks:
        y = z
        for dense in block.dense:
            y = copy(dense, f"{block.name}_{dense.name}")(y)
        z = keras.layers.Add(name=block.name)([z, y])
    main = copy(core.main_output)(keras.layers.Concatenate(name=core.concat.name)([wide, z]))
    outputs = main if core.aux_output is None else {MAIN: main, AUX: copy(core.aux_output)(z)}
    functional = keras.Model({WIDE: wide, DEEP: deep}, outputs, name=CORE)
    for layer, twin in pairs:
        twin.set_weights(layer.get_weights())
    return compose(preprocessor, functional)


def output_names(core: keras.Model) -> list[str]:
    """The core's outputs, main first: Keras's names for their losses and metrics."""
    if isinstance(core, WideAndDeepModel):
        return core.head_names
    if isinstance(core, keras.Sequential):
        return [core.layers[-1].name]
    return sorted(core.output_names, key=lambda name: name != MAIN)


def main_output(raw):
    """The main output's predictions among those of a model with several outputs."""
    return raw[MAIN] if isinstance(raw, dict) else raw


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
    # A Functional model's operations include the Keras operations of the preprocessing, which
    # are not layers; a subclass has layers only.
    for layer in getattr(model, "operations", model.layers):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model) and not prefix:
            rows += _rows(layer, f"{layer.name}/")
            continue
        try:
            shape = str(tuple(layer.output.shape))
        except (AttributeError, ValueError):  # layers of subclassed models have no fixed output
            shape = "?"
        params = layer.count_params() if isinstance(layer, keras.layers.Layer) else 0
        rows.append((prefix + layer.name, type(layer).__name__, shape, f"{params:,}"))
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
    core = _layer_or_none(model, CORE)
    if isinstance(core, WideAndDeepModel):
        lines.append(
            f"{CORE} is a subclassed {type(core).__name__}: Keras lists its layers without their "
            "connections or shapes, which only its call() defines"
        )
    return "\n".join(lines) + "\n"


def _layer_or_none(model: keras.Model, name: str):
    try:
        return model.get_layer(name)
    except ValueError:
        return None


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
    """Save as `.keras` through a temporary sibling, so a crash never leaves half a file, with the
    same bytes whenever the model is the same (no save date, fixed entry times)."""
    with files.atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
        reproducible.normalize_keras_archive(tmp)


def save_model_folder(model: keras.Model, path: str | Path) -> None:
    """Write a model made by `compose` as a folder, replaced whole, that `load_model_folder`
    reads back: `model.keras` for the Sequential and Functional APIs; for a subclass,
    `preprocess.keras`, the core's weights (`save_weights`) and the config it is rebuilt from."""
    preprocessor, core = split_model(model)
    with files.atomic_dir(path) as tmp:
        if isinstance(core, WideAndDeepModel):
            save_model(preprocessor, tmp / PREPROCESS_FILE)
            # A core rebuilt from its config holds the weights alone, without the state of the
            # optimizer that trained it.
            bare = WideAndDeepModel.from_config(core.get_config())
            compose(preprocessor, bare)
            bare.set_weights(core.get_weights())
            bare.save_weights(tmp / CORE_WEIGHTS_FILE)
            config = {"class_name": type(core).__name__, "config": core.get_config()}
            files.write_json(tmp / CORE_CONFIG_FILE, config)
        else:
            save_model(model, tmp / KERAS_FILE)


def load_model_folder(path: str | Path) -> keras.Model:
    """The model in a folder written by `save_model_folder`: a subclass is rebuilt from its
    config, behind the saved preprocessing, and its weights are loaded."""
    path = Path(path)
    if (path / KERAS_FILE).is_file():
        return load_model(path / KERAS_FILE)
    if not (path / CORE_CONFIG_FILE).is_file():
        raise MlpipeError(
            f"{path}: no {KERAS_FILE} or {CORE_CONFIG_FILE} in this folder: not a model saved by "
            "this project; rerun the stage that produces it (`dvc repro`)"
        )
    preprocessor = load_model(path / PREPROCESS_FILE)
    try:
        saved = json.loads((path / CORE_CONFIG_FILE).read_text())
        # Only this project's own class is rebuilt: the config names no code to import.
        if saved.get("class_name") != WideAndDeepModel.__name__:
            raise ValueError(f"unknown class {saved.get('class_name')!r}")
        core = WideAndDeepModel.from_config(saved["config"])
        model = compose(preprocessor, core)  # calling the core creates its weights
        core.load_weights(path / CORE_WEIGHTS_FILE)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise MlpipeError(
            f"{path}: cannot rebuild the subclassed core from {CORE_CONFIG_FILE} and "
            f"{CORE_WEIGHTS_FILE} ({type(err).__name__}: {err}); rerun `dvc repro`"
        ) from err
    return model
