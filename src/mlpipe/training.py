"""Compiling and fitting a model with the callbacks every run gets."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from dvclive import Live
from dvclive.keras import DVCLiveCallback

from mlpipe import MlpipeError
from mlpipe.config import OptimizerParams, TrainParams

log = logging.getLogger("mlpipe.train")

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


def make_optimizer(cfg: OptimizerParams) -> keras.optimizers.Optimizer:
    return OPTIMIZERS[cfg.name](learning_rate=cfg.learning_rate)


def compile_model(model: keras.Model, train: TrainParams, schema: dict) -> None:
    loss, metrics = loss_and_metrics(schema)
    model.compile(optimizer=make_optimizer(train.optimizer), loss=loss, metrics=metrics)


class EpochLogger(keras.callbacks.Callback):
    """One log line per epoch, to stderr, instead of Keras's progress bars on stdout."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        values = " ".join(f"{k}={v:.4f}" for k, v in (logs or {}).items())
        log.info("epoch %d/%d %s", epoch + 1, self.epochs, values)


def fit(
    model: keras.Model,
    train: TrainParams,
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    dirs: RunDirs,
) -> dict:
    """Fit on data["train"], validate on data["valid"]; the best epoch ends up at dirs.checkpoint.

    Returns the run summary for metrics/train.json.
    """
    early_stopping = keras.callbacks.EarlyStopping(
        monitor=train.monitor,
        patience=train.early_stopping.patience,
        min_delta=train.early_stopping.min_delta,
        restore_best_weights=True,
    )
    live = Live(dir=str(dirs.dvclive), save_dvc_exp=False, dvcyaml=None, report=None)
    callbacks = [
        keras.callbacks.ModelCheckpoint(
            dirs.checkpoint, monitor=train.monitor, save_best_only=True
        ),
        early_stopping,
        keras.callbacks.TensorBoard(log_dir=str(dirs.tensorboard)),
        DVCLiveCallback(live=live),
        EpochLogger(train.epochs),
    ]
    x_train, y_train = data["train"]
    start = time.perf_counter()
    history = model.fit(
        x_train,
        y_train,
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
