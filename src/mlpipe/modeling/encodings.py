"""The tabular network: learned encodings of the feature matrix (periodic embeddings of the
numeric columns, embeddings of the categorical ones) and an ensemble whose members share the
hidden layers (TabM-mini) or each have their own, in front of and around the hidden layers.

Built from Keras's own layers and operations only (EinsumDense, Embedding, sin, cos, slicing),
so the saved model loads with plain Keras, as the default one does.

The preprocessing in front (`features.build_preprocessor`) gives the numeric columns first,
then, with `categorical_encoding: embedding`, one index per categorical column (0: unseen,
then its vocabulary, missing included), else their one-hot blocks.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from mlpipe.model_params import ModelParams, PeriodicParams
from mlpipe.modeling.networks import hidden_layers, member_initializer, output_spec
from mlpipe.schema import Schema

# Embedding width from the number of slots n (categories, unseen, missing): the rule of
# fastai's tabular learner, min(50, round(1.6 * n ** 0.56)), at least 1.
MAX_EMBEDDING_WIDTH = 50


def embedding_width(slots: int) -> int:
    return max(1, min(MAX_EMBEDDING_WIDTH, round(1.6 * slots**0.56)))


def periodic_embedding(
    x: keras.KerasTensor, n_features: int, cfg: PeriodicParams
) -> keras.KerasTensor:
    """PLR (Gorishniy et al. 2022): per feature j, v = 2 pi c_j x_j with learned frequencies
    c_j ~ N(0, sigma), then ReLU(W_j [sin v, cos v] + b_j): `width` numbers per feature."""
    k = cfg.frequencies
    v = keras.layers.EinsumDense(
        "bn,nk->bnk",
        output_shape=(n_features, k),
        kernel_initializer=keras.initializers.RandomNormal(stddev=cfg.sigma),
        name="periodic_frequencies",
    )(x)
    v = ops.multiply(v, 2 * math.pi)
    v = ops.concatenate([ops.sin(v), ops.cos(v)], axis=-1)
    v = keras.layers.EinsumDense(
        "bnf,nfd->bnd",
        output_shape=(n_features, cfg.width),
        bias_axes="nd",
        activation="relu",
        name="periodic_linear",
    )(v)
    return keras.layers.Flatten(name="periodic")(v)


def encode_features(
    x: keras.KerasTensor, cfg: ModelParams, n_numeric: int, slots: list[int] | None
) -> keras.KerasTensor:
    """The network's own encodings of the feature matrix `x`: `slots` gives each categorical
    column's number of indices when they come as indices (embeddings), None when one-hot."""
    parts = []
    if n_numeric:
        numeric = x[:, :n_numeric]
        if cfg.numeric_encoding == "periodic":
            numeric = periodic_embedding(numeric, n_numeric, cfg.periodic)
        parts.append(numeric)
    if slots is None:
        if x.shape[-1] > n_numeric:
            parts.append(x[:, n_numeric:])
    else:
        for i, n in enumerate(slots):
            index = ops.cast(x[:, n_numeric + i], "int32")
            layer = keras.layers.Embedding(n, embedding_width(n), name=f"embedding_{i + 1}")
            parts.append(layer(index))
    if len(parts) == 1:
        return parts[0]
    return keras.layers.Concatenate(name="encoded")(parts)


def build_tabular_core(
    cfg: ModelParams,
    schema: Schema,
    n_features: int,
    n_numeric: int,
    slots: list[int] | None,
    rescale: keras.layers.Layer | None = None,
) -> keras.Model:
    """A Functional core: encodings, then the hidden layers and the output. With
    `ensemble_size` k > 1, k members, each with its own output layer, and the prediction is
    their mean (of probabilities for classification). With `ensemble_weights: shared`,
    TabM-mini (Gorishniy et al. 2025): the members share the hidden layers, each scaling the
    encoded features by its own vector (initialised to random signs); with `independent`, each
    has its own hidden layers. Training sees each member's output, `ensemble_output`, and trains
    each on its own loss (training.members)."""
    x = keras.Input(shape=(n_features,), name="features")
    z = encode_features(x, cfg, n_numeric, slots)
    k = cfg.ensemble_size
    width = z.shape[-1]
    adapter = None
    independent = k > 1 and cfg.ensemble_weights == "independent"
    if k > 1 and not independent:
        adapter = keras.layers.EinsumDense(
            "bf,kf->bkf", output_shape=(k, width), name="ensemble_adapter"
        )
        z = adapter(z)
    layers = hidden_layers(
        **cfg.model_dump(
            include={"hidden_units", "activation", "kernel_initializer", "l2", "dropout"}
        ),
        batch_norm=cfg.batch_norm,
        members=k if independent else 1,
    )
    for layer in layers:
        z = layer(z)
    units, activation = output_spec(schema)
    if k > 1:
        heads = keras.layers.EinsumDense(
            "bkh,khu->bku",
            output_shape=(k, units),
            bias_axes="ku",
            activation=activation,
            kernel_initializer=member_initializer("glorot_uniform"),
            name="ensemble_output",
        )(z)
        output = ops.mean(heads, axis=1)
    else:
        output = keras.layers.Dense(units, activation=activation, name="output")(z)
    if rescale is not None:
        output = rescale(output)
    core = keras.Model(x, output, name="core")
    if adapter is not None:
        # Random signs, from NumPy's generator that the build stage seeds.
        signs = np.where(np.random.random((k, width)) < 0.5, -1.0, 1.0).astype("float32")
        adapter.set_weights([signs])
    return core
