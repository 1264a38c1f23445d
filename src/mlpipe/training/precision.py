"""`train.precision`: the number format the network computes in while it trains.

`mixed_bfloat16` is Keras's mixed precision: the weights stay float32, and each layer computes
in bfloat16 (Keras casts the weights and inputs as they enter it). The heads, the layers that
give the outputs, stay in float32, so that softmax, sigmoid, the rescaling of a standardized
target and the loss read float32 numbers. It is a training setting only: the trained model is
saved computing in float32, which is what `evaluate` scores and `export` and `serve` run, and
the range test (`lr_find`) runs in float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras

from mlpipe.modeling.networks import WideAndDeepModel

FLOAT32 = "float32"


@contextlib.contextmanager
def computing_in(model: keras.Model, precision: str) -> Iterator[None]:
    """While inside, every layer of `model` but its heads computes in `precision`; on leaving,
    each layer's own policy is back. Compile and fit the model inside."""
    if precision == FLOAT32:
        yield
        return
    heads = {id(layer) for layer in head_layers(model)}
    layers = [
        layer for layer in model._flatten_layers(include_self=False) if id(layer) not in heads
    ]
    before = [layer.dtype_policy for layer in layers]
    try:
        for layer in layers:
            layer.dtype_policy = precision
        yield
    finally:
        for layer, policy in zip(layers, before, strict=True):
            layer.dtype_policy = policy


def head_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers that give `model`'s outputs: from each output back through the layers without
    weights (an activation, a mean, a rescaling) to the first with weights, which is included."""
    if isinstance(model, WideAndDeepModel):
        return [model.get_layer(name) for name in model.head_names]
    heads: list[keras.layers.Layer] = []
    pending = [tensor._keras_history[:2] for tensor in model.outputs]
    while pending:
        layer, node_index = pending.pop()
        if any(layer is head for head in heads):
            continue
        heads.append(layer)
        if layer.trainable_weights or isinstance(layer, keras.layers.InputLayer):
            continue
        for tensor in layer._inbound_nodes[node_index].input_tensors:
            pending.append(tensor._keras_history[:2])
    return heads
