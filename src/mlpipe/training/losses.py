"""What the task and the model's outputs ask of training: the loss and metrics of each output,
the labels fed to each, class weights, and the checks of `train.monitor`,
`train.loss_weights` and `train.class_weight` against the model, made before training starts.
"""

from __future__ import annotations

import keras
import numpy as np
from sklearn.utils.class_weight import compute_class_weight

from mlpipe import MlpipeError
from mlpipe.modeling.models import output_names
from mlpipe.params import TrainParams
from mlpipe.schema import Schema


def loss_and_metrics(schema: Schema, monitor: str = "val_loss") -> tuple[str, list]:
    """The loss and the metrics Keras logs; ROC AUC (two classes) only when `monitor` asks for
    it, since it costs a pass over thresholds at every batch."""
    if schema.task == "regression":
        return "mse", [
            keras.metrics.RootMeanSquaredError(name="rmse"),
            keras.metrics.MeanAbsoluteError(name="mae"),
        ]
    if schema.n_classes == 2:
        auc = [keras.metrics.AUC(name="auc")] if monitor.endswith("_auc") else []
        return "binary_crossentropy", ["accuracy", *auc]
    return "sparse_categorical_crossentropy", ["accuracy"]


def monitor_choices(schema: Schema, outputs: list[str] | None = None) -> list[str]:
    """The validation values Keras logs: `val_loss` and `val_<metric>` for one output; for
    several, `val_loss` (the weighted total) and `val_<output>_loss`, `val_<output>_<metric>`.
    ROC AUC is there for two classes."""
    metrics = ["rmse", "mae"] if schema.task == "regression" else ["accuracy"]
    if schema.task == "classification" and schema.n_classes == 2:
        metrics.append("auc")
    if not outputs or len(outputs) == 1:
        return [f"val_{name}" for name in ["loss", *metrics]]
    return ["val_loss"] + [f"val_{out}_{name}" for out in outputs for name in ["loss", *metrics]]


def check_monitor(train: TrainParams, schema: Schema, outputs: list[str] | None = None) -> None:
    choices = monitor_choices(schema, outputs)
    if train.monitor not in choices:
        model = f"{schema.task} model" + (
            f" with outputs {', '.join(outputs)}" if outputs and len(outputs) > 1 else ""
        )
        raise MlpipeError(
            f"train.monitor: `{train.monitor}` is not reported for a {model}; "
            f"choose one of {', '.join(choices)}"
        )


def monitor_mode(monitor: str) -> str:
    """Whether the monitored value should grow or shrink. Keras guesses this from the metric's
    name, and fails to for the per-output names (`val_main_rmse`)."""
    return "max" if monitor.endswith(("accuracy", "auc")) else "min"


def check_loss_weights(loss_weights: dict[str, float] | None, outputs: list[str]) -> None:
    """`train.loss_weights` must name outputs the model has, and the model must have several."""
    if loss_weights is None:
        return
    unknown = [name for name in loss_weights if name not in outputs]
    if unknown:
        raise MlpipeError(
            f"train.loss_weights: {', '.join(f'`{n}`' for n in unknown)} is not an output of "
            f"this model, whose outputs are {', '.join(outputs)}"
            + ("; model.aux_output: true adds `aux`" if len(outputs) == 1 else "")
        )
    if len(outputs) == 1:
        raise MlpipeError(
            f"train.loss_weights weighs the losses of several outputs; this model has one "
            f"(`{outputs[0]}`): set it to null, or add an output with model.aux_output: true"
        )


def label_outputs(data: dict[str, tuple], outputs: list[str]) -> dict[str, tuple]:
    """Feed each split's labels to every output of a model with several."""
    if len(outputs) == 1:
        return data
    return {split: (x, {name: y for name in outputs}) for split, (x, y) in data.items()}


def output_losses(
    loss_weights: dict[str, float] | None, schema: Schema, outputs: list[str]
) -> tuple[str | dict[str, str], dict[str, float] | None]:
    """The loss, and for several outputs one per output with `train.loss_weights` (1 each by
    default), which Keras sums into the loss that is minimized."""
    loss = loss_and_metrics(schema)[0]
    if len(outputs) == 1:
        return loss, None
    weights = {name: (loss_weights or {}).get(name, 1.0) for name in outputs}
    return dict.fromkeys(outputs, loss), weights


def class_weights(
    train: TrainParams, schema: Schema, y_train: np.ndarray
) -> dict[int, float] | None:
    """Keras's `class_weight` (class index to weight) from `train.class_weight`.

    `balanced` weighs class c by n_samples / (n_classes * n_c), as scikit-learn's
    compute_class_weight does. Labels in a mapping are matched to the schema's classes as text,
    so `1` and `"1"` name the same class; a class left out keeps weight 1.
    """
    setting = train.class_weight
    if setting is None:
        return None
    if schema.task != "classification":
        raise MlpipeError("train.class_weight applies to classification; this task is regression")
    classes = list(schema.classes or ())
    if setting == "balanced":
        weights = compute_class_weight("balanced", classes=np.arange(len(classes)), y=y_train)
        return {i: float(w) for i, w in enumerate(weights)}
    index = {str(label): i for i, label in enumerate(classes)}
    unknown = [label for label in setting if str(label) not in index]
    if unknown:
        raise MlpipeError(
            f"train.class_weight: {unknown} are not classes of `{schema.target}`; "
            f"the classes are {classes}"
        )
    weights = {i: 1.0 for i in range(len(classes))}
    weights.update({index[str(label)]: weight for label, weight in setting.items()})
    return weights


def check_weighting(train: TrainParams, schema: Schema, model: keras.Model) -> None:
    """Refuse, before training, the combinations of weights that Keras rejects mid-fit."""
    if train.class_weight is None:
        return
    if schema.weight_column:
        raise MlpipeError(
            f"train.class_weight cannot be combined with data.weight_column "
            f"(`{schema.weight_column}`): Keras accepts class_weight or sample_weight, not "
            "both. Multiply each row's weight by its class's weight in that column, or set "
            "train.class_weight to null."
        )
    if len(output_names(model)) > 1:
        raise MlpipeError(
            "train.class_weight is not supported by Keras for a model with several outputs "
            f"({', '.join(output_names(model))}); give per-row weights through "
            "data.weight_column instead, or set model.aux_output: false."
        )
