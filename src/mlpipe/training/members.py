"""Training an ensemble's members each on its own loss (TabM, Gorishniy et al. 2025).

A core built with `model.ensemble_size` k > 1 predicts the mean of k members
(`modeling.encodings.build_tabular_core`). Trained on the loss of that mean, the members are
pulled towards each other; TabM trains each on its own loss, which keeps them diverse, and
averages them only to predict. Here training sees a view of the same layers that ends at the
members' outputs, (batch, k, units): `MemberLoss` is the mean over the members of the task's
loss, and `MemberMean` computes a metric on the members' mean, so `val_rmse`, `val_accuracy`
and `val_auc` (what early stopping and the checkpoint watch) are the ensemble's. `val_loss` is
the members' mean loss. The view shares every weight with the core, which is what is saved.
"""

from __future__ import annotations

import keras
from keras import ops

from mlpipe.schema import Schema

# The layer of a tabular core that gives each member's output (encodings.build_tabular_core).
MEMBERS_LAYER = "ensemble_output"
# The layer after it that maps standardized predictions back to the target (target_rescaling).
RESCALE_LAYER = "target"
# The end of a view's name.
VIEW_SUFFIX = "_members"


def members_view(core: keras.Model) -> keras.Model | None:
    """A model over `core`'s inputs and weights whose output is each member's prediction,
    (batch, k, units), rescaled to the target as the core's mean is; None for a core without
    ensemble members."""
    if not isinstance(core, keras.Model) or not _has_layer(core, MEMBERS_LAYER):
        return None
    members = core.get_layer(MEMBERS_LAYER).output
    if _has_layer(core, RESCALE_LAYER):
        members = core.get_layer(RESCALE_LAYER)(members)
    return keras.Model(core.inputs, members, name=core.name + VIEW_SUFFIX)


def is_members_view(model: keras.Model) -> bool:
    """Whether `model` is a view made by `members_view`."""
    return model.name.endswith(VIEW_SUFFIX)


def _has_layer(model: keras.Model, name: str) -> bool:
    return any(layer.name == name for layer in model.layers)


@keras.saving.register_keras_serializable(package="mlpipe")
class MemberLoss(keras.losses.Loss):
    """The mean over the members (axis 1 of the prediction) of `loss`, one of Keras's
    `mse`, `binary_crossentropy`, `sparse_categorical_crossentropy`, with the labels given to
    every member."""

    def __init__(self, loss: str, name: str | None = None, **kwargs):
        super().__init__(name=name or f"member_{loss}", **kwargs)
        self.loss = loss
        self.fn = keras.losses.get(loss)

    def call(self, y_true, y_pred):
        k = ops.shape(y_pred)[1]
        if self.loss == "sparse_categorical_crossentropy":
            labels = ops.reshape(y_true, (-1, 1))  # (batch, k): one class index per member
            labels = ops.broadcast_to(labels, (ops.shape(y_pred)[0], k))
        else:
            labels = ops.reshape(ops.cast(y_true, y_pred.dtype), (-1, 1, 1))
            labels = ops.broadcast_to(labels, ops.shape(y_pred))
        return ops.mean(self.fn(labels, y_pred), axis=1)  # (batch,)

    def get_config(self):
        return {**super().get_config(), "loss": self.loss}


@keras.saving.register_keras_serializable(package="mlpipe")
class MemberMean(keras.metrics.Metric):
    """`metric` of the members' mean prediction (of probabilities, for classification), under
    the metric's own name."""

    def __init__(self, metric: keras.metrics.Metric, **kwargs):
        super().__init__(name=metric.name, **kwargs)
        self.metric = metric

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.metric.update_state(y_true, ops.mean(y_pred, axis=1), sample_weight)

    def result(self):
        return self.metric.result()

    def reset_state(self):
        self.metric.reset_state()

    def get_config(self):
        return {"metric": keras.metrics.serialize(self.metric)}

    @classmethod
    def from_config(cls, config):
        return cls(keras.metrics.deserialize(config["metric"]))


def metric_objects(schema: Schema, metrics: list) -> list[keras.metrics.Metric]:
    """Keras's metric objects for the names `losses.loss_and_metrics` gives (`accuracy` is
    resolved by the task as Keras would), each on the members' mean."""
    objects = []
    for metric in metrics:
        if metric == "accuracy":
            metric = (
                keras.metrics.BinaryAccuracy(name="accuracy")
                if schema.n_classes == 2
                else keras.metrics.SparseCategoricalAccuracy(name="accuracy")
            )
        objects.append(MemberMean(metric))
    return objects
