"""Resuming an interrupted training run where it stopped, callbacks included.

Keras's BackupAndRestore restores the weights, the optimizer and the epoch, but not the state of
the Dropout layers' random-number generators, and EarlyStopping, ModelCheckpoint and
ReduceLROnPlateau start afresh: the resumed epochs would drop other units, patience would reset
and the first resumed epoch would overwrite a better checkpoint. This subclass saves their state
with each backup and puts it back on restart, and refuses a backup made by a different run
configuration.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import keras
import numpy as np

from mlpipe.util import files
from mlpipe.util.files import file_sha256, plain

log = logging.getLogger("mlpipe.train")

STATE_FILE = "mlpipe_state.json"
# Attributes that make up each steering callback's memory of the run so far.
STATE_ATTRIBUTES = {
    keras.callbacks.EarlyStopping: ("wait", "best", "best_epoch", "stopped_epoch"),
    keras.callbacks.ModelCheckpoint: ("best",),
    keras.callbacks.ReduceLROnPlateau: ("wait", "best", "cooldown_counter"),
}


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that also carries the steering callbacks' state and a run fingerprint.

    Put it last in the callback list, so that it snapshots the other callbacks after their
    epoch-end updates and restores them after their own resets at train begin.
    """

    def __init__(self, backup_dir: Path, fingerprint: str, steering: list):
        super().__init__(str(backup_dir), save_freq="epoch", double_checkpoint=True)
        self.dir = Path(backup_dir)
        self.fingerprint = fingerprint
        self.steering = steering
        self._resumed: dict | None = None

    def resume_epoch(self) -> int:
        """The epoch training will start from: 0, unless a usable backup of this run exists.

        Call before fit, to feed the data from that epoch on. A backup of another configuration,
        or one whose parts disagree (killed while saving), is discarded.
        """
        self._resumed = self._read_state()
        if self._resumed is None:
            shutil.rmtree(self.dir, ignore_errors=True)
            return 0
        log.info("resuming from the backup in %s after epoch %d", self.dir, self._resumed["epoch"])
        return self._resumed["epoch"]

    def start_over(self) -> int:
        """Discard the backup that resume_epoch() found; the epoch to start from: 0."""
        self._resumed = None
        shutil.rmtree(self.dir, ignore_errors=True)
        return 0

    def _read_state(self) -> dict | None:
        """The saved state, if it matches this run and a complete weights backup of its epoch.

        Keras writes the weights, then the epoch; this class then writes the state. A kill
        between those writes leaves the newest files out of step: the previous backup, which
        Keras keeps as `.bkp` files, is then put back when it matches the state.
        """
        try:
            state = json.loads((self.dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        if state.get("fingerprint") != self.fingerprint:
            log.warning("discarding a backup of a different configuration in %s", self.dir)
            return None
        latest = (Path(self._weights_path), Path(self._training_metadata_path))
        previous = (Path(self._prev_weights_path), Path(self._prev_training_metadata_path))
        for weights, metadata in (latest, previous):
            if _matches(state, weights, metadata):
                if weights != latest[0]:
                    shutil.copyfile(weights, latest[0])
                    shutil.copyfile(metadata, latest[1])
                return state
        log.warning("discarding a backup interrupted while it was saved, in %s", self.dir)
        return None

    def on_train_begin(self, logs=None):
        """Restore weights, optimizer and epoch (Keras), then the steering callbacks' state.

        The optimizer's variables include its step count and a plain rate (as the plateau
        schedule lowered it), so the rate comes back with them under every schedule.

        Requires resume_epoch() to have been called, so that the data starts at that epoch too.
        """
        super().on_train_begin(logs)
        state = self._resumed
        if state is None:
            return
        # Dropout draws its masks from generators whose state the weights leave out.
        generators = state.get("generators")
        if generators is not None:
            for variable, value in zip(_generator_states(self.model), generators, strict=True):
                variable.assign(np.asarray(value, dtype=variable.dtype))
        for callback, saved in zip(self.steering, state["callbacks"], strict=True):
            for name, value in saved.items():
                setattr(callback, name, value)
        if state["best_weights"]:
            with np.load(self.dir / state["best_weights"]) as arrays:
                best = [arrays[f"w{i}"] for i in range(len(arrays.files))]
            for callback in self.steering:
                if isinstance(callback, keras.callbacks.EarlyStopping):
                    callback.best_weights = best

    def _save_model(self):
        super()._save_model()
        best_file = None
        for callback in self.steering:
            weights = getattr(callback, "best_weights", None)
            if isinstance(callback, keras.callbacks.EarlyStopping) and weights is not None:
                best_file = f"early_stopping_best.{self._current_epoch}.npz"
                with files.atomic_path(self.dir / best_file) as tmp, open(tmp, "wb") as handle:
                    np.savez(handle, **{f"w{i}": w for i, w in enumerate(weights)})
        # Written last: a backup counts only once this file names its epoch and weights.
        files.write_json(
            self.dir / STATE_FILE,
            {
                "epoch": self._current_epoch,
                "fingerprint": self.fingerprint,
                "weights_sha256": file_sha256(Path(self._weights_path)),
                "best_weights": best_file,
                "callbacks": [_state_of(callback) for callback in self.steering],
                "generators": [np.asarray(v).tolist() for v in _generator_states(self.model)],
            },
        )
        for old in self.dir.glob("early_stopping_best.*.npz"):
            if old.name != best_file:
                old.unlink()


def _generator_states(model: keras.Model) -> list:
    """The state variables of the model's random-number generators (those of its Dropout
    layers), in the model's order."""
    return [v for v in model.non_trainable_variables if v.path.endswith("seed_generator_state")]


def _matches(state: dict, weights: Path, metadata: Path) -> bool:
    try:
        epoch = json.loads(metadata.read_text())["epoch"]
        return epoch == state["epoch"] and file_sha256(weights) == state["weights_sha256"]
    except (OSError, ValueError, KeyError):
        return False


def _state_of(callback) -> dict:
    for kind, names in STATE_ATTRIBUTES.items():
        if isinstance(callback, kind):
            return {name: plain(getattr(callback, name)) for name in names}
    raise TypeError(f"no resumable state is known for {type(callback).__name__}")
