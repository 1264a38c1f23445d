"""Compiling and fitting a model with the callbacks every run gets."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from dvclive import Live
from dvclive.keras import DVCLiveCallback
from keras.optimizers.schedules import LearningRateSchedule
from sklearn.utils.class_weight import compute_class_weight

from mlpipe import MlpipeError
from mlpipe.callbacks import DivergenceGuard, EpochLogger, OneCycle, TrainingSignals
from mlpipe.config import TrainParams

OPTIMIZERS = {
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "nadam": keras.optimizers.Nadam,
}


@dataclass(frozen=True)
class RunDirs:
    """Where a training run writes besides the model: the checkpoint and the two loggers."""

    checkpoint: Path
    tensorboard: Path
    dvclive: Path


def loss_and_metrics(schema: dict) -> tuple[str, list]:
    if schema["task"] == "regression":
        return "mse", [
            keras.metrics.RootMeanSquaredError(name="rmse"),
            keras.metrics.MeanAbsoluteError(name="mae"),
        ]
    if len(schema["classes"]) == 2:
        return "binary_crossentropy", ["accuracy"]
    return "sparse_categorical_crossentropy", ["accuracy"]


def monitor_choices(schema: dict) -> list[str]:
    metrics = ["rmse", "mae"] if schema["task"] == "regression" else ["accuracy"]
    return [f"val_{name}" for name in ["loss", *metrics]]


def check_monitor(train: TrainParams, schema: dict) -> None:
    choices = monitor_choices(schema)
    if train.monitor not in choices:
        raise MlpipeError(
            f"train.monitor: `{train.monitor}` is not reported for a {schema['task']} model; "
            f"choose one of {', '.join(choices)}"
        )


def learning_rate(train: TrainParams, steps_per_epoch: int) -> float | LearningRateSchedule:
    """The optimizer's rate: a number, or a built-in Keras schedule that decays it per step."""
    rate = train.optimizer.learning_rate
    schedule = train.lr_schedule
    if schedule.name == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(
            rate,
            decay_steps=schedule.exponential.decay_epochs * steps_per_epoch,
            decay_rate=schedule.exponential.decay_rate,
        )
    if schedule.name == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            rate, decay_steps=train.epochs * steps_per_epoch, alpha=schedule.cosine.alpha
        )
    return rate


def schedule_callbacks(train: TrainParams, steps_per_epoch: int) -> list[keras.callbacks.Callback]:
    """Schedules that act through callbacks rather than through the optimizer's rate."""
    schedule = train.lr_schedule
    if schedule.name == "plateau":
        return [
            keras.callbacks.ReduceLROnPlateau(
                monitor=train.monitor,
                factor=schedule.plateau.factor,
                patience=schedule.plateau.patience,
                min_lr=schedule.plateau.min_learning_rate,
            )
        ]
    if schedule.name == "one_cycle":
        cycle = schedule.one_cycle
        return [
            OneCycle(
                train.optimizer.learning_rate,
                train.epochs * steps_per_epoch,
                cycle.warmup_fraction,
                cycle.div_factor,
                cycle.final_div_factor,
            )
        ]
    return []


def make_optimizer(train: TrainParams, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    cfg = train.optimizer
    return OPTIMIZERS[cfg.name](
        learning_rate=learning_rate(train, steps_per_epoch), **cfg.settings()
    )


def compile_model(
    model: keras.Model, train: TrainParams, schema: dict, steps_per_epoch: int
) -> None:
    loss, metrics = loss_and_metrics(schema)
    optimizer = make_optimizer(train, steps_per_epoch)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)


def class_weights(train: TrainParams, schema: dict, y_train: np.ndarray) -> dict[int, float] | None:
    """Keras's `class_weight` (class index to weight) from `train.class_weight`.

    `balanced` weighs class c by n_samples / (n_classes * n_c), as scikit-learn's
    compute_class_weight does. Labels in a mapping are matched to the schema's classes as text,
    so `1` and `"1"` name the same class; a class left out keeps weight 1.
    """
    setting = train.class_weight
    if setting is None:
        return None
    if schema["task"] != "classification":
        raise MlpipeError("train.class_weight applies to classification; this task is regression")
    classes = schema["classes"]
    if setting == "balanced":
        weights = compute_class_weight("balanced", classes=np.arange(len(classes)), y=y_train)
        return {i: float(w) for i, w in enumerate(weights)}
    index = {str(label): i for i, label in enumerate(classes)}
    unknown = [label for label in setting if str(label) not in index]
    if unknown:
        raise MlpipeError(
            f"train.class_weight: {unknown} are not classes of `{schema['target']}`; "
            f"the classes are {classes}"
        )
    weights = {i: 1.0 for i in range(len(classes))}
    weights.update({index[str(label)]: weight for label, weight in setting.items()})
    return weights


def check_weighting(train: TrainParams, schema: dict, model: keras.Model) -> None:
    """Refuse, before training, the combinations of weights that Keras rejects mid-fit."""
    if train.class_weight is None:
        return
    if schema.get("weight_column"):
        raise MlpipeError(
            f"train.class_weight cannot be combined with data.weight_column "
            f"(`{schema['weight_column']}`): Keras accepts class_weight or sample_weight, not "
            "both. Multiply each row's weight by its class's weight in that column, or set "
            "train.class_weight to null."
        )
    if len(model.outputs) > 1:
        raise MlpipeError(
            "train.class_weight is not supported by Keras for a model with several outputs; "
            "give per-row weights through data.weight_column instead."
        )


def fit(
    model: keras.Model,
    train: TrainParams,
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    dirs: RunDirs,
    sample_weight: np.ndarray | None = None,
    class_weight: dict[int, float] | None = None,
) -> dict:
    """Fit on data["train"], validate on data["valid"]; the best epoch ends up at dirs.checkpoint.

    The model must be compiled (compile_model). Returns the run summary for metrics/train.json.
    """
    x_train, y_train = data["train"]
    steps_per_epoch = steps(len(x_train), train.batch_size)
    early_stopping = keras.callbacks.EarlyStopping(
        monitor=train.monitor,
        patience=train.early_stopping.patience,
        min_delta=train.early_stopping.min_delta,
        restore_best_weights=True,
    )
    live = Live(dir=str(dirs.dvclive), save_dvc_exp=False, dvcyaml=None, report=None)
    callbacks = [
        DivergenceGuard(),
        TrainingSignals(),
        *schedule_callbacks(train, steps_per_epoch),
        keras.callbacks.ModelCheckpoint(
            dirs.checkpoint, monitor=train.monitor, save_best_only=True
        ),
        early_stopping,
        keras.callbacks.TensorBoard(log_dir=str(dirs.tensorboard)),
        DVCLiveCallback(live=live),
        EpochLogger(train.epochs),
    ]
    start = time.perf_counter()
    history = model.fit(
        x_train,
        y_train,
        sample_weight=sample_weight,
        class_weight=class_weight,
        validation_data=data["valid"],
        epochs=train.epochs,
        batch_size=train.batch_size,
        callbacks=callbacks,
        verbose=0,
    )
    seconds = time.perf_counter() - start
    return {
        "epochs_run": len(history.epoch),
        "best_epoch": early_stopping.best_epoch + 1,
        "monitor": train.monitor,
        "best_monitor_value": round(float(early_stopping.best), 6),
        "train_seconds": round(seconds, 2),
    }


def steps(n_rows: int, batch_size: int) -> int:
    return max(math.ceil(n_rows / batch_size), 1)
