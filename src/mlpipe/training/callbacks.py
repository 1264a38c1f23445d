"""The project's own Keras callbacks: logging, a divergence guard and an atomic checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np

from mlpipe import MlpipeError
from mlpipe.training.losses import monitor_mode
from mlpipe.util import files

log = logging.getLogger("mlpipe.train")


class TrainingDiverged(MlpipeError):
    """The loss stopped being a finite number."""


def current_learning_rate(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class TrainingSignals(keras.callbacks.Callback):
    """Adds the learning rate in use and the validation/training loss ratio to each epoch's logs.

    Placed first, so that TensorBoard, DVCLive and the log line all record both. The ratio is
    `overfit_ratio` rather than `val_...` so that loggers do not file it as a validation metric.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["learning_rate"] = current_learning_rate(self.model)
        if "val_loss" in logs and logs.get("loss"):
            logs["overfit_ratio"] = float(logs["val_loss"]) / float(logs["loss"])


class DivergenceGuard(keras.callbacks.Callback):
    """Fails the run at the first batch whose loss is NaN or infinite.

    Keras's TerminateOnNaN stops "gracefully" and fit returns normally, so a diverged run would
    be recorded as done. Raising makes the stage exit non-zero before anything is saved.
    """

    def __init__(self):
        super().__init__()
        self.epoch = 0
        self.checked = 0  # batches of this epoch already seen with a finite loss

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.checked = 0

    def on_train_batch_end(self, batch, logs=None):
        # With steps_per_execution > 1, Keras calls this once per group of batches, numbering
        # a shorter last group of the epoch as if it were full.
        last = min(batch + 1, self.params.get("steps") or batch + 1)
        first, self.checked = self.checked + 1, last
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(np.asarray(loss))):
            where = f"batch {last}" if first == last else f"batches {first}-{last}"
            raise TrainingDiverged(
                f"training diverged: the loss became {float(np.asarray(loss))} at epoch "
                f"{self.epoch + 1}, {where} (learning rate "
                f"{current_learning_rate(self.model):g}). Lower train.optimizer.learning_rate "
                "(the lr_schedule may raise it too); no model was saved."
            )


class EpochLogger(keras.callbacks.Callback):
    """One log line per epoch, to stderr, instead of Keras's progress bars on stdout."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        values = " ".join(f"{k}={v:.4g}" for k, v in (logs or {}).items())
        log.info("epoch %d/%d %s", epoch + 1, self.epochs, values)


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
            with files.atomic_path(filepath, suffix=".weights.h5") as tmp:
                self.model.save_weights(tmp)
