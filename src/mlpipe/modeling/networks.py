"""The trainable networks' building blocks, shared by the three Keras APIs, and the subclassed
Wide & Deep model.

Every API builds its hidden layers with `hidden_layers`, so `model.hidden_units`, activation,
initializer, L2, batch normalization and dropout mean the same whichever API is chosen.
"""

from __future__ import annotations

import keras

from mlpipe.schema import Schema

# Names of the two feature paths (the preprocessor's outputs, the core's inputs) and of the
# outputs of a network with several.
WIDE = "wide"
DEEP = "deep"
MAIN = "main"
AUX = "aux"


def hidden_layers(
    hidden_units: list[int],
    activation: str,
    kernel_initializer: str,
    l2: float = 0.0,
    dropout: float = 0.0,
    batch_norm: bool = False,
    members: int = 1,
) -> list[keras.layers.Layer]:
    """Dense layers `hidden_1`, `hidden_2`..., each followed by batch normalization and dropout
    when asked for. With `members` k > 1, k independent MLPs in one graph: `hidden_i` maps
    (batch, k, in) to (batch, k, out), each member with its own kernel and bias, and the first
    reads features (batch, in) that every member shares."""
    layers: list[keras.layers.Layer] = []
    for i, units in enumerate(hidden_units, start=1):
        regularizer = keras.regularizers.L2(l2) if l2 else None
        if members > 1:
            layers.append(
                keras.layers.EinsumDense(
                    "bf,kfh->bkh" if i == 1 else "bkf,kfh->bkh",
                    output_shape=(members, units),
                    bias_axes="kh",
                    activation=activation,
                    kernel_initializer=member_initializer(kernel_initializer),
                    kernel_regularizer=regularizer,
                    name=f"hidden_{i}",
                )
            )
        else:
            layers.append(
                keras.layers.Dense(
                    units,
                    activation=activation,
                    kernel_initializer=kernel_initializer,
                    kernel_regularizer=regularizer,
                    name=f"hidden_{i}",
                )
            )
        if batch_norm:
            layers.append(keras.layers.BatchNormalization(name=f"batch_norm_{i}"))
        if dropout > 0:
            layers.append(keras.layers.Dropout(dropout, name=f"dropout_{i}"))
    return layers


def member_initializer(name: str) -> keras.initializers.VarianceScaling:
    """The initializer `name` for a kernel of shape (members, in, out), scaled by each member's
    fan-in and fan-out: left to itself, EinsumDense would count the members as output units."""
    base = keras.initializers.get(name)
    return keras.initializers.VarianceScaling(
        scale=base.scale,
        mode=base.mode,
        distribution=base.distribution,
        input_axes=[1],
        output_axes=[2],
    )


def output_spec(schema: Schema) -> tuple[int, str | None]:
    """Softmax over classes, one sigmoid unit for two classes, one linear unit for regression."""
    if schema.task == "regression":
        return 1, None
    n_classes = schema.n_classes
    return (1, "sigmoid") if n_classes == 2 else (n_classes, "softmax")


@keras.saving.register_keras_serializable(package="mlpipe")
class ResidualBlock(keras.layers.Layer):
    """Two dense layers whose output is added to the block's input (Géron, chapter 12)."""

    def __init__(self, units: int, activation: str, kernel_initializer: str, **kwargs):
        super().__init__(**kwargs)
        self.units, self.activation, self.kernel_initializer = units, activation, kernel_initializer
        self.dense = [
            keras.layers.Dense(
                units, activation=activation, kernel_initializer=kernel_initializer, name=name
            )
            for name in ("dense_1", "dense_2")
        ]

    def build(self, input_shape):
        # The block keeps the width of its input, so each dense layer takes that shape.
        for layer in self.dense:
            layer.build(input_shape)

    def call(self, inputs):
        z = inputs
        for layer in self.dense:
            z = layer(z)
        return inputs + z

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "activation": self.activation,
            "kernel_initializer": self.kernel_initializer,
        }


@keras.saving.register_keras_serializable(package="mlpipe")
class WideAndDeepModel(keras.Model):
    """Géron's `WideAndDeepModel` (chapter 10): {"wide", "deep"} inputs; the deep input goes
    through the hidden layers, then through `residual_blocks` residual blocks, which `call()`
    loops over; the main output reads the wide input beside the deep features, and with
    `aux_output` an auxiliary output reads the deep features alone.

    Keras cannot inspect a subclass's graph, so it is saved as weights (`save_weights`) plus
    `get_config()`, and rebuilt with `from_config`; registration lets `.keras` files hold it too.
    """

    def __init__(
        self,
        hidden_units: list[int],
        output_units: int,
        output_activation: str | None = None,
        activation: str = "relu",
        kernel_initializer: str = "he_normal",
        l2: float = 0.0,
        dropout: float = 0.0,
        batch_norm: bool = False,
        residual_blocks: int = 0,
        aux_output: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.settings = {
            "hidden_units": [int(u) for u in hidden_units],
            "output_units": int(output_units),
            "output_activation": output_activation,
            "activation": activation,
            "kernel_initializer": kernel_initializer,
            "l2": float(l2),
            "dropout": float(dropout),
            "batch_norm": bool(batch_norm),
            "residual_blocks": int(residual_blocks),
            "aux_output": bool(aux_output),
        }
        self.hidden = hidden_layers(
            hidden_units, activation, kernel_initializer, l2, dropout, batch_norm
        )
        self.blocks = [
            ResidualBlock(hidden_units[-1], activation, kernel_initializer, name=f"residual_{i}")
            for i in range(1, residual_blocks + 1)
        ]
        self.concat = keras.layers.Concatenate(name="wide_and_deep")
        self.main_output = keras.layers.Dense(output_units, activation=output_activation, name=MAIN)
        self.aux_output = (
            keras.layers.Dense(output_units, activation=output_activation, name=AUX)
            if aux_output
            else None
        )

    def call(self, inputs):
        z = inputs[DEEP]
        for layer in self.hidden:
            z = layer(z)
        # A Python loop run at every call: a declarative model would have to be unrolled, block
        # by block, when it is built.
        for block in self.blocks:
            z = block(z)
        main = self.main_output(self.concat([inputs[WIDE], z]))
        if self.aux_output is None:
            return main
        return {MAIN: main, AUX: self.aux_output(z)}

    @property
    def head_names(self) -> list[str]:
        return [MAIN, AUX] if self.aux_output is not None else [MAIN]

    def get_config(self):
        return {**super().get_config(), **self.settings}
