"""Training, the operation: `train` fits the network behind a built model's fixed preprocessing,
with checkpointing, early stopping, resuming, TensorBoard and DVCLive, and returns the model of
the best epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from dvclive import Live
from dvclive.keras import DVCLiveCallback

from mlpipe import features
from mlpipe.modeling import models
from mlpipe.params import TrainParams
from mlpipe.schema import Schema
from mlpipe.training import losses, members, optimizers, precision
from mlpipe.training.batches import ShuffledBatches, steps
from mlpipe.training.callbacks import (
    AtomicCheckpoint,
    DivergenceGuard,
    EpochLogger,
    TrainingDiverged,
    TrainingSignals,
)
from mlpipe.training.distribute import Cluster, DistributeError
from mlpipe.training.resume import ResumableBackup
from mlpipe.training.streamed import StreamedBatches, StreamedSplits
from mlpipe.util import files
from mlpipe.util.shards import ShardedSplit

log = logging.getLogger("mlpipe.train")

# Measured on 200,000 x 64 rows at batch 32 (2 cores): 1 -> 34k, 32 -> 76k, 128 -> 96k,
# 1000 -> 103k samples/s. 128 keeps a diverging loss located within 128 batches.
MAX_STEPS_PER_EXECUTION = 128


@dataclass(frozen=True)
class RunDirs:
    """Where a training run writes besides the model: checkpoint, backup and the two loggers."""

    checkpoint: Path
    tensorboard: Path
    dvclive: Path
    backup: Path

    @classmethod
    def inside(cls, folder: Path) -> RunDirs:
        """All of them in `folder`, for a run whose logs nobody keeps (tests, examples)."""
        return cls(folder / "best.weights.h5", folder / "tb", folder / "live", folder / "backup")

    def of_worker(self, task: str) -> RunDirs:
        """A worker's own paths beside the chief's (`.model.backup` -> `.model.worker-1.backup`):
        each needs its own backup; it writes neither curves nor TensorBoard logs."""

        def beside(path: Path, *suffixes: str) -> Path:
            suffix = next((s for s in suffixes if path.name.endswith(s)), "")
            return path.with_name(f"{path.name.removesuffix(suffix)}.{task}{suffix}")

        return RunDirs(
            beside(self.checkpoint, ".checkpoint.weights.h5", ".weights.h5"),
            beside(self.tensorboard, ".backup"),
            beside(self.dvclive, ".backup"),
            beside(self.backup, ".backup"),
        )


def train(
    model: keras.Model,
    cfg: TrainParams,
    splits: dict[str, pd.DataFrame] | dict[str, ShardedSplit],
    schema: Schema,
    dirs: RunDirs,
    *,
    seed: int,
    learning_rate: float,
    input_files: Sequence[Path] = (),
    cluster: Cluster | None = None,
) -> tuple[keras.Model, dict]:
    """Train the network of `model` (made by the build stage) by `cfg` (the train section) on
    splits["train"], validating on splits["valid"], at `learning_rate` (where
    train.lr_schedule starts); `seed` orders each epoch's batches.

    The preprocessing stays as build adapted it: it turns each split into features once. The
    params are checked against the model before any training. A backup in dirs.backup left by
    an interrupted run of the same params, rate and `input_files` is resumed. Returns the model
    of the best epoch, preprocessing included and not compiled, and the run summary for
    metrics/train.json.

    Under a `cluster` strategy, `model` must have been loaded in its scope; a worker other than
    the chief trains in step with it, on its own paths (RunDirs.of_worker).
    """
    cluster = cluster or Cluster()
    if not cluster.chief:
        dirs = dirs.of_worker(cluster.task)
    preprocessor, network = models.split_model(model)
    outputs = models.output_names(network)
    losses.check_monitor(cfg, schema, outputs)
    losses.check_loss_weights(cfg.loss_weights, outputs)
    losses.check_weighting(cfg, schema, network)

    xy: dict[str, tuple] | StreamedSplits
    if isinstance(splits["train"], ShardedSplit) and cluster.strategy is not None:
        raise DistributeError(
            f"train.distribute.strategy {cluster.kind} does not read data in Parquet shards "
            "yet (data.source is a folder): set train.distribute.strategy: none"
        )
    if isinstance(splits["train"], ShardedSplit):  # read batch by batch, preprocessed on the fly
        xy = StreamedSplits(preprocessor, splits, schema, outputs)
        sample_weight = None  # in the streamed batches
        labels = xy.train_labels() if cfg.class_weight is not None else np.empty(0, np.int64)
        class_weight = losses.class_weights(cfg, schema, labels)
        steps_per_epoch = steps(xy.train_rows, cfg.batch_size)
    else:
        # Features computed once per split; labels fed to every output
        sample_weight = features.sample_weights(splits["train"], schema)
        xy = features.matrices(preprocessor, {s: splits[s] for s in ("train", "valid")}, schema)
        class_weight = losses.class_weights(cfg, schema, xy["train"][1])
        steps_per_epoch = steps(len(xy["train"][1]), cfg.batch_size)
        xy = losses.label_outputs(xy, outputs)
    del splits  # frees the tables unless the caller keeps them (the train stage does not)
    # An ensemble trains each member on its own loss, through a view of the same weights
    trained = members.members_view(network) or network
    key = fingerprint(cfg, seed, learning_rate, input_files)
    try:
        with precision.computing_in(trained, cfg.precision):
            with cluster.scope():
                compile_model(
                    trained, cfg, schema, learning_rate, steps_per_epoch, cluster.strategy
                )
            summary = fit_network(
                trained, cfg, xy, dirs, seed, key, sample_weight, class_weight, cluster
            )
    except TrainingDiverged:
        # Nothing of a diverged run is worth resuming, or showing.
        for folder in (dirs.backup, dirs.dvclive, dirs.tensorboard):
            shutil.rmtree(folder, ignore_errors=True)
        dirs.checkpoint.unlink(missing_ok=True)
        raise
    except KeyboardInterrupt:
        log.warning("rerun to resume from the last completed epoch, kept in %s", dirs.backup)
        raise
    trained.load_weights(dirs.checkpoint)
    dirs.checkpoint.unlink()
    log.info(
        "best epoch %d of %d: %s=%.4f",
        summary["best_epoch"],
        summary["epochs_run"],
        summary["monitor"],
        summary["best_monitor_value"],
    )
    # What is saved and served: the best epoch's weights behind the unchanged preprocessing, one
    # model from raw columns, without the optimizer that trained them: its state is of no use
    # there, and a one_cycle schedule in it would make loading need mlpipe.training.
    bare = type(network).from_config(network.get_config())
    best = models.compose(preprocessor, bare)
    bare.set_weights(network.get_weights())
    return best, summary


def steps_per_execution(train: TrainParams, steps_per_epoch: int) -> int:
    """Batches per call into TensorFlow. Each call costs a fixed overhead that dominates small
    batches; `auto` runs up to 128 batches per call."""
    if train.steps_per_execution != "auto":
        return train.steps_per_execution
    return min(steps_per_epoch, MAX_STEPS_PER_EXECUTION)


def compile_model(
    model: keras.Model,
    train: TrainParams,
    schema: Schema,
    learning_rate: float,
    steps_per_epoch: int,
    strategy: object = None,
) -> None:
    """The optimizer at `learning_rate` under train.lr_schedule, and a loss and metric set per
    output (`losses.output_losses`); for an ensemble's `members.members_view`, each member's
    loss and the metrics of their mean. Under a tf.distribute `strategy`, one batch per call:
    Keras fails on more there (keras-team/keras#19246)."""
    outputs = models.output_names(model)
    loss, loss_weights = losses.output_losses(train.loss_weights, schema, outputs)
    metrics = losses.loss_and_metrics(schema, train.monitor)[1]
    if len(outputs) > 1:  # own objects per output
        metrics = {name: losses.loss_and_metrics(schema, train.monitor)[1] for name in outputs}
    elif members.is_members_view(model):
        assert isinstance(loss, str)
        loss, metrics = members.MemberLoss(loss), members.metric_objects(schema, metrics)
    rate = optimizers.schedule(train, learning_rate, steps_per_epoch)
    model.compile(
        optimizer=optimizers.build_optimizer(train.optimizer, rate),
        loss=loss,
        loss_weights=loss_weights,
        metrics=metrics,
        steps_per_execution=1 if strategy else steps_per_execution(train, steps_per_epoch),
    )


def trim_dvclive(live_dir: Path, epochs_kept: int) -> None:
    """Drop DVCLive rows of epochs that will be trained again, so a resumed curve has no gaps
    or repeats."""
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text().splitlines(keepends=True)
        files.write_text(tsv, "".join(lines[: 1 + epochs_kept]))


def fit_network(
    model: keras.Model,
    train: TrainParams,
    data: dict[str, tuple] | StreamedSplits,
    dirs: RunDirs,
    seed: int,
    fingerprint: str,
    sample_weight: np.ndarray | None = None,
    class_weight: dict[int, float] | None = None,
    cluster: Cluster | None = None,
) -> dict:
    """Fit on data["train"], validate on data["valid"]; the best epoch's weights end up at
    dirs.checkpoint (a `.weights.h5` file).

    The model must be compiled (compile_model). A backup in dirs.backup written by an
    interrupted run with the same `fingerprint` is resumed. Returns the run summary for
    metrics/train.json. Only the chief of a `cluster` writes DVCLive and TensorBoard logs.
    """
    cluster = cluster or Cluster()
    early_stopping = keras.callbacks.EarlyStopping(
        monitor=train.monitor,
        mode=losses.monitor_mode(train.monitor),
        patience=train.early_stopping.patience,
        min_delta=train.early_stopping.min_delta,
        restore_best_weights=True,
    )
    checkpoint = AtomicCheckpoint(dirs.checkpoint, monitor=train.monitor)
    schedules = optimizers.schedule_callbacks(train)
    backup = ResumableBackup(dirs.backup, fingerprint, [early_stopping, checkpoint, *schedules])
    first_epoch = backup.resume_epoch()
    if not cluster.agree(first_epoch):
        log.warning("the workers' backups are of different epochs: every worker starts over")
        first_epoch = backup.start_over()
    batches: ShuffledBatches | StreamedBatches
    if isinstance(data, StreamedSplits):
        batches = data.batches(train.batch_size, seed, first_epoch, train.epochs)
        validation = data.validation(train.batch_size)
    else:
        x_train, y_train = data["train"]
        arrays = (x_train, y_train) if sample_weight is None else (x_train, y_train, sample_weight)
        batches = ShuffledBatches(
            arrays, train.batch_size, seed, first_epoch, train.epochs, model.steps_per_execution
        )
        batches.dataset = cluster.shardable(batches.dataset)
        validation = data["valid"]
    files.clean_stale(dirs.checkpoint)
    if first_epoch == 0:
        dirs.checkpoint.unlink(missing_ok=True)
    callbacks = [DivergenceGuard(), TrainingSignals(), *schedules, checkpoint, early_stopping]
    if cluster.chief:
        callbacks += chief_loggers(dirs, first_epoch, train.epochs)
    callbacks.append(backup)  # last: it saves the others' state after they have updated it
    start = time.perf_counter()
    history = batches.fit(model, callbacks, class_weight=class_weight, validation_data=validation)
    # A timing is logged, not recorded: in metrics/train.json it would change dvc.lock on every
    # rerun and show up as a changed metric in every diff.
    log.info("trained in %.1f s", time.perf_counter() - start)
    return {
        "epochs_run": history.epoch[-1] + 1 if history.epoch else first_epoch,
        "resumed_from_epoch": first_epoch,
        "best_epoch": early_stopping.best_epoch + 1,
        "monitor": train.monitor,
        "best_monitor_value": round(float(early_stopping.best), 6),
    }


def chief_loggers(dirs: RunDirs, first_epoch: int, epochs: int) -> list[keras.callbacks.Callback]:
    """TensorBoard, DVCLive and the log line, continued from `first_epoch`."""
    if first_epoch == 0:
        shutil.rmtree(dirs.tensorboard, ignore_errors=True)
        shutil.rmtree(dirs.dvclive, ignore_errors=True)
    else:
        trim_dvclive(dirs.dvclive, first_epoch)
    live = Live(
        dir=str(dirs.dvclive), resume=first_epoch > 0, save_dvc_exp=False, dvcyaml=None, report=None
    )
    live.step = first_epoch
    return [
        keras.callbacks.TensorBoard(log_dir=str(dirs.tensorboard)),
        DVCLiveCallback(live=live),
        EpochLogger(epochs),
    ]


def fingerprint(
    cfg: TrainParams, seed: int, learning_rate: float, inputs: Sequence[Path] = ()
) -> str:
    """What a backup must match to be resumed: the train section with defaults filled in, the
    seed, the rate trained at (the params may say `auto`) and the input files."""
    settings = {"seed": seed, "train": cfg.model_dump(mode="json")}
    parts = [json.dumps(settings, sort_keys=True), f"learning_rate {learning_rate!r}"]
    parts += [files.file_sha256(p) for p in inputs]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()
