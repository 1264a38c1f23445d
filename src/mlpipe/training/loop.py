"""Compiling and fitting a model with the callbacks every run gets."""

from __future__ import annotations

import hashlib
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from dvclive import Live
from dvclive.keras import DVCLiveCallback
from keras.optimizers.schedules import LearningRateSchedule
from sklearn.utils.class_weight import compute_class_weight

from mlpipe import MlpipeError
from mlpipe.modeling.models import output_names
from mlpipe.params import OptimizerParams, Params, TrainParams, params_hash
from mlpipe.training.callbacks import DivergenceGuard, EpochLogger, OneCycle, TrainingSignals
from mlpipe.training.resume import ResumableBackup
from mlpipe.util import files

# Measured on 200,000 x 64 rows at batch 32 (2 cores): 1 -> 34k, 32 -> 76k, 128 -> 96k,
# 1000 -> 103k samples/s. 128 keeps a diverging loss located within 128 batches.
MAX_STEPS_PER_EXECUTION = 128
# Rows of training data gathered at once when shuffling (see epoch_batches).
BLOCK_BYTES = 16 * 2**20

OPTIMIZERS = {
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "nadam": keras.optimizers.Nadam,
}


@dataclass(frozen=True)
class RunDirs:
    """Where a training run writes besides the model: checkpoint, backup and the two loggers."""

    checkpoint: Path
    tensorboard: Path
    dvclive: Path
    backup: Path


def loss_and_metrics(schema: dict) -> tuple[str, list]:
    if schema["task"] == "regression":
        return "mse", [
            keras.metrics.RootMeanSquaredError(name="rmse"),
            keras.metrics.MeanAbsoluteError(name="mae"),
        ]
    if len(schema["classes"]) == 2:
        return "binary_crossentropy", ["accuracy"]
    return "sparse_categorical_crossentropy", ["accuracy"]


def monitor_choices(schema: dict, outputs: list[str] | None = None) -> list[str]:
    """The validation values Keras logs: `val_loss` and `val_<metric>` for one output; for
    several, `val_loss` (the weighted total) and `val_<output>_loss`, `val_<output>_<metric>`."""
    metrics = ["rmse", "mae"] if schema["task"] == "regression" else ["accuracy"]
    if not outputs or len(outputs) == 1:
        return [f"val_{name}" for name in ["loss", *metrics]]
    return ["val_loss"] + [f"val_{out}_{name}" for out in outputs for name in ["loss", *metrics]]


def check_monitor(train: TrainParams, schema: dict, outputs: list[str] | None = None) -> None:
    choices = monitor_choices(schema, outputs)
    if train.monitor not in choices:
        model = f"{schema['task']} model" + (
            f" with outputs {', '.join(outputs)}" if outputs and len(outputs) > 1 else ""
        )
        raise MlpipeError(
            f"train.monitor: `{train.monitor}` is not reported for a {model}; "
            f"choose one of {', '.join(choices)}"
        )


def monitor_mode(monitor: str) -> str:
    """Whether the monitored value should grow or shrink. Keras guesses this from the metric's
    name, and fails to for the per-output names (`val_main_rmse`)."""
    return "max" if monitor.endswith("accuracy") else "min"


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


def learning_rate(train: TrainParams, steps_per_epoch: int) -> float | LearningRateSchedule:
    """The optimizer's rate: a number, or a built-in Keras schedule that decays it per step."""
    rate = train.optimizer.learning_rate
    if rate == "auto":
        raise MlpipeError(
            "train.optimizer.learning_rate is auto: resolve it from the lr_find stage's record "
            "(config.resolve_learning_rate) before building the optimizer"
        )
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
                mode=monitor_mode(train.monitor),
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


def steps_per_execution(train: TrainParams, steps_per_epoch: int) -> int:
    """Batches per call into TensorFlow. Each call costs a fixed overhead that dominates small
    batches; `auto` runs up to 128 batches per call, or 1 when one_cycle must set the rate
    before every batch."""
    if train.steps_per_execution != "auto":
        return train.steps_per_execution
    if train.lr_schedule.name == "one_cycle":
        return 1
    return min(steps_per_epoch, MAX_STEPS_PER_EXECUTION)


def make_optimizer(train: TrainParams, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    return build_optimizer(train.optimizer, learning_rate(train, steps_per_epoch))


def build_optimizer(
    cfg: OptimizerParams, rate: float | LearningRateSchedule
) -> keras.optimizers.Optimizer:
    """The optimizer `cfg.name` with its own settings, at `rate`."""
    return OPTIMIZERS[cfg.name](learning_rate=rate, **cfg.settings())


def output_losses(
    loss_weights: dict[str, float] | None, schema: dict, outputs: list[str]
) -> tuple[str | dict[str, str], dict[str, float] | None]:
    """The loss, and for several outputs one per output with `train.loss_weights` (1 each by
    default), which Keras sums into the loss that is minimized."""
    loss = loss_and_metrics(schema)[0]
    if len(outputs) == 1:
        return loss, None
    weights = {name: (loss_weights or {}).get(name, 1.0) for name in outputs}
    return dict.fromkeys(outputs, loss), weights


def compile_model(
    model: keras.Model, train: TrainParams, schema: dict, steps_per_epoch: int
) -> None:
    """The optimizer, and a loss and metric set per output (`output_losses`)."""
    outputs = output_names(model)
    loss, loss_weights = output_losses(train.loss_weights, schema, outputs)
    metrics = loss_and_metrics(schema)[1]
    if len(outputs) > 1:
        metrics = {name: loss_and_metrics(schema)[1] for name in outputs}  # own metric objects
    model.compile(
        optimizer=make_optimizer(train, steps_per_epoch),
        loss=loss,
        loss_weights=loss_weights,
        metrics=metrics,
        steps_per_execution=steps_per_execution(train, steps_per_epoch),
    )


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
    if len(output_names(model)) > 1:
        raise MlpipeError(
            "train.class_weight is not supported by Keras for a model with several outputs "
            f"({', '.join(output_names(model))}); give per-row weights through "
            "data.weight_column instead, or set model.aux_output: false."
        )


class AtomicCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint of the weights (`.weights.h5`, whatever the model's API) that writes
    through a temporary file, so a kill mid-save cannot leave a truncated file where the
    previous best stood."""

    def __init__(self, filepath: Path, monitor: str):
        super().__init__(
            filepath,
            monitor=monitor,
            mode=monitor_mode(monitor),
            save_best_only=True,
            save_weights_only=True,
        )

    def _save_model(self, epoch, batch, logs):
        filepath = Path(self._get_file_path(epoch, batch, logs))
        if self._should_save_model(epoch, batch, logs, str(filepath)):
            tmp = filepath.with_name(f".{filepath.name.removesuffix('.weights.h5')}.tmp.weights.h5")
            try:
                self.model.save_weights(tmp)
                tmp.replace(filepath)
            finally:
                tmp.unlink(missing_ok=True)


def n_rows(x) -> int:
    """Rows of a feature matrix, or of a dict of them."""
    return int(tf.nest.flatten(x)[0].shape[0])


class ShuffledBatches(keras.callbacks.Callback):
    """The training data as `fit` reads it, for epochs first_epoch..epochs-1: pass `dataset`
    and `steps_per_epoch` to `fit`, and this callback to the same `fit`.

    `arrays` is (x, y) or (x, y, sample_weight), where x and y may be dicts of arrays (a model
    with several inputs or outputs); every array is cut by the same rows.

    Keras's own shuffling draws from one random stream, so a run resumed at epoch k would see
    other batches than an uninterrupted one. Seeding each epoch's shuffle by its number makes
    the batches of epoch k the same however the run got there.

    Keras runs `steps_per_execution` batches per call whatever `steps_per_epoch` says. When
    that divides an epoch's batches, `dataset` is one stream of all epochs. Otherwise a stream
    would let an epoch's last call take the next epoch's first batches, so `dataset` is one
    epoch, which Keras passes over anew each epoch (`steps_per_epoch` None), and the callback
    tells it which epoch to shuffle for; a new pass costs about 40 ms.
    """

    def __init__(
        self,
        arrays: tuple,
        batch_size: int,
        seed: int,
        first_epoch: int,
        epochs: int,
        steps_per_execution: int,
    ):
        super().__init__()
        batches = steps(n_rows(arrays), batch_size)
        # Read by the dataset each time Keras starts a pass over it (after on_epoch_begin).
        self.epoch = tf.Variable(first_epoch, dtype=tf.int64, trainable=False)
        if batches % steps_per_execution == 0:
            numbers = tf.data.Dataset.range(first_epoch, epochs)
            self.steps_per_epoch: int | None = batches
        else:
            numbers = tf.data.Dataset.range(1).map(lambda _: self.epoch.read_value())
            self.steps_per_epoch = None
        self.dataset = epoch_batches(arrays, batch_size, seed, numbers)
        if self.steps_per_epoch is None:
            # The batch count is known, so Keras knows each epoch's steps without being told.
            self.dataset = self.dataset.apply(tf.data.experimental.assert_cardinality(batches))

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch.assign(epoch)


def epoch_batches(
    arrays: tuple, batch_size: int, seed: int, epochs: tf.data.Dataset
) -> tf.data.Dataset:
    """The batches of `arrays` for each epoch number in `epochs`, in the order that (seed,
    epoch) alone decides."""
    # tf.data would embed a captured tensor in its graph: another copy of the table. A variable
    # is captured by reference (features.transform already returns one).
    columns = tuple(
        a if isinstance(a, tf.Variable) else tf.Variable(a, trainable=False)
        for a in tf.nest.flatten(arrays)
    )
    rows_total = n_rows(arrays)
    row_bytes = sum(4 * max(1, int(np.prod(c.shape[1:]))) for c in columns)
    block = max(1, BLOCK_BYTES // (row_bytes * batch_size)) * batch_size
    nested = any(tf.nest.is_nested(a) for a in arrays)

    def batches_of(rows):
        # One gather per block of rows, then the block is cut into ready batches: far cheaper
        # per batch than a gather each, and memory stays at one block.
        block_columns = tuple(tf.gather(c, rows) for c in columns)
        n = tf.shape(rows)[0]
        full = n // batch_size * batch_size
        heads = tuple(
            tf.reshape(c[:full], tf.concat([[-1, batch_size], tf.shape(c)[1:]], 0))
            for c in block_columns
        )
        tail = tf.data.Dataset.from_tensors(tuple(c[full:] for c in block_columns))
        batches = tf.data.Dataset.from_tensor_slices(heads).concatenate(
            tail.filter(lambda *c: tf.shape(c[0])[0] > 0)
        )
        if not nested:
            return batches
        # Dicts of inputs or labels were cut as flat columns: give each batch their shape back.
        return batches.map(lambda *c: tf.nest.pack_sequence_as(arrays, list(c)))

    def one_epoch(epoch):
        key = tf.stack([tf.constant(seed, tf.int64), epoch])
        order = tf.random.experimental.stateless_shuffle(tf.range(rows_total, dtype=tf.int64), key)
        return tf.data.Dataset.from_tensor_slices(order).batch(block).flat_map(batches_of)

    return epochs.flat_map(one_epoch).prefetch(tf.data.AUTOTUNE)


def trim_dvclive(live_dir: Path, epochs_kept: int) -> None:
    """Drop DVCLive rows of epochs that will be trained again, so a resumed curve has no gaps
    or repeats."""
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text().splitlines(keepends=True)
        files.write_text(tsv, "".join(lines[: 1 + epochs_kept]))


def fit(
    model: keras.Model,
    train: TrainParams,
    data: dict[str, tuple],
    dirs: RunDirs,
    seed: int,
    fingerprint: str,
    sample_weight: np.ndarray | None = None,
    class_weight: dict[int, float] | None = None,
) -> dict:
    """Fit on data["train"], validate on data["valid"]; the best epoch's weights end up at
    dirs.checkpoint (a `.weights.h5` file).

    The model must be compiled (compile_model). A backup in dirs.backup written by an
    interrupted run with the same `fingerprint` is resumed. Returns the run summary for
    metrics/train.json.
    """
    x_train, y_train = data["train"]
    steps_per_epoch = steps(n_rows(x_train), train.batch_size)
    early_stopping = keras.callbacks.EarlyStopping(
        monitor=train.monitor,
        mode=monitor_mode(train.monitor),
        patience=train.early_stopping.patience,
        min_delta=train.early_stopping.min_delta,
        restore_best_weights=True,
    )
    checkpoint = AtomicCheckpoint(dirs.checkpoint, monitor=train.monitor)
    schedules = schedule_callbacks(train, steps_per_epoch)
    steering = [early_stopping, checkpoint] + [
        c for c in schedules if isinstance(c, keras.callbacks.ReduceLROnPlateau)
    ]
    backup = ResumableBackup(dirs.backup, fingerprint, steering)
    first_epoch = backup.resume_epoch()
    arrays = (x_train, y_train) if sample_weight is None else (x_train, y_train, sample_weight)
    batches = ShuffledBatches(
        arrays, train.batch_size, seed, first_epoch, train.epochs, model.steps_per_execution
    )
    if first_epoch == 0:
        shutil.rmtree(dirs.tensorboard, ignore_errors=True)
        dirs.checkpoint.unlink(missing_ok=True)
    else:
        trim_dvclive(dirs.dvclive, first_epoch)
    live = Live(
        dir=str(dirs.dvclive), resume=first_epoch > 0, save_dvc_exp=False, dvcyaml=None, report=None
    )
    live.step = first_epoch
    callbacks = [
        batches,
        DivergenceGuard(),
        TrainingSignals(),
        *schedules,
        checkpoint,
        early_stopping,
        keras.callbacks.TensorBoard(log_dir=str(dirs.tensorboard)),
        DVCLiveCallback(live=live),
        EpochLogger(train.epochs),
        backup,  # last: it saves the others' state after they have updated it
    ]
    start = time.perf_counter()
    history = model.fit(
        batches.dataset,
        class_weight=class_weight,
        validation_data=data["valid"],
        epochs=train.epochs,
        steps_per_epoch=batches.steps_per_epoch,
        shuffle=False,  # ShuffledBatches shuffles, by epoch number
        callbacks=callbacks,
        verbose=0,
    )
    seconds = time.perf_counter() - start
    return {
        "epochs_run": history.epoch[-1] + 1 if history.epoch else first_epoch,
        "resumed_from_epoch": first_epoch,
        "best_epoch": early_stopping.best_epoch + 1,
        "monitor": train.monitor,
        "best_monitor_value": round(float(early_stopping.best), 6),
        "train_seconds": round(seconds, 2),
    }


def fingerprint(params: Params, inputs: list[Path]) -> str:
    """What a backup must match to be resumed: the seed, the train section and the input files."""
    parts = [params_hash(params, ("seed", "train"))] + [files.file_sha256(p) for p in inputs]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def steps(n_rows: int, batch_size: int) -> int:
    return max(math.ceil(n_rows / batch_size), 1)
