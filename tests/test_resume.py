"""Interrupted training resumes where it stopped and ends as an uninterrupted run would.

These run the real train stage in subprocesses and stop it with real signals.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from typing import Any

import keras
import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, stage_env, tiny_params, write_prepared
from mlpipe.modeling import models
from mlpipe.schema import read_schema, read_splits
from mlpipe.training.lr_find import learning_rate_record
from mlpipe.util import runtime

EPOCHS = 40  # long enough that the run is still going when the signal arrives
ARGS = ["model", "train.json", "--dvclive", "live", "--tensorboard", "tb"]
ARGS += ["--learning-rate", "learning_rate.json"]


def setup_run(folder, prepared_dir, **train):
    folder.mkdir()
    settings = {"epochs": EPOCHS, "early_stopping": {"patience": EPOCHS}, **train}
    params = tiny_params(train=settings)
    (folder / "params.yaml").write_text(json.dumps(params.model_dump(mode="json")))
    record = learning_rate_record(params.train.optimizer, None)
    (folder / "learning_rate.json").write_text(json.dumps(record))
    schema = read_schema(prepared_dir)
    train = read_splits(prepared_dir)["train"]
    runtime.seed_everything(params.seed)  # both runs of a comparison start from the same model
    model = models.build_model(params.model, schema, train)
    models.save_model_folder(model, folder / "untrained")
    return folder


def command(prepared_dir):
    script = str(ROOT / "stages/train.py")
    return [sys.executable, script, str(prepared_dir), "untrained", *ARGS]


def train(folder, prepared_dir) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(prepared_dir), cwd=folder, env=stage_env(), capture_output=True, text=True
    )


def train_until(folder, prepared_dir, epoch: int, sig: int) -> None:
    """Start training and send `sig` as soon as epoch `epoch` has been logged."""
    process = subprocess.Popen(
        command(prepared_dir),
        cwd=folder,
        env=stage_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # A child inherits an ignored SIGINT, and Python then installs no KeyboardInterrupt
        # handler: give the stage the default disposition a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stderr is not None
    for line in process.stderr:
        if f"epoch {epoch}/{EPOCHS} " in line:
            process.send_signal(sig)
            break
    rest = process.stderr.read()
    code = process.wait(timeout=60)
    assert code != 0, "the run finished before it was interrupted"
    if sig == signal.SIGINT:
        assert code == 130 and "rerun to resume" in rest and "Traceback" not in rest


def outcome(folder):
    summary = json.loads((folder / "train.json").read_text())
    del summary["resumed_from_epoch"]
    curves = {
        path.relative_to(folder / "live").as_posix(): pd.read_csv(path, sep="\t")
        for path in sorted((folder / "live").rglob("*.tsv"))
    }
    return summary, curves, models.load_model_folder(folder / "model")


# Each schedule's state must come back: the plateau's patience and lowered rate, the step
# count that the exponential, cosine and one_cycle rates follow.
SCHEDULES: dict[str, dict[str, Any]] = {
    "none": {},
    "exponential": {"lr_schedule": {"name": "exponential"}},
    "cosine": {"lr_schedule": {"name": "cosine"}},
    "plateau": {
        "lr_schedule": {"name": "plateau", "plateau": {"patience": 0}},
        "optimizer": {"learning_rate": 0.01},  # high enough that the loss stalls early
    },
    "one_cycle": {"lr_schedule": {"name": "one_cycle"}},
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, module_prepared):
    """The outcome of an uninterrupted run under each schedule, run when first asked for."""
    runs = {}

    def run(schedule: str):
        if schedule not in runs:
            folder = tmp_path_factory.mktemp("runs") / "straight"
            setup_run(folder, module_prepared, **SCHEDULES[schedule])
            result = train(folder, module_prepared)
            assert result.returncode == 0, result.stderr
            runs[schedule] = outcome(folder)
        return runs[schedule]

    return run


@pytest.fixture(scope="module")
def module_prepared(tmp_path_factory, digits):
    return write_prepared(tmp_path_factory.mktemp("prepared"), digits)


def kill_epoch(curves: dict) -> int:
    """An epoch after which to stop a run: 3, or just after the rate has first changed."""
    rates = curves["plots/metrics/train/learning_rate.tsv"]["learning_rate"]
    changed = [epoch for epoch in range(1, EPOCHS) if rates[epoch] != rates[epoch - 1]]
    assert not changed or changed[0] < EPOCHS - 5, "the rate changed too late to test resuming"
    return max(3, changed[0] + 2) if changed else 3


@pytest.mark.parametrize(
    ("sig", "schedule"),
    [
        (signal.SIGKILL, "none"),
        (signal.SIGINT, "none"),
        (signal.SIGKILL, "exponential"),
        (signal.SIGKILL, "cosine"),
        (signal.SIGKILL, "plateau"),
        (signal.SIGKILL, "one_cycle"),
    ],
    ids=lambda value: getattr(value, "name", value),
)
@pytest.mark.slow
def test_killed_run_resumes_and_matches_an_uninterrupted_one(
    tmp_path, module_prepared, uninterrupted, sig, schedule
):
    expected_summary, expected_curves, expected_model = uninterrupted(schedule)
    if schedule == "plateau":
        rates = expected_curves["plots/metrics/train/learning_rate.tsv"]["learning_rate"]
        assert rates.iloc[-1] < rates.iloc[0], "the plateau schedule never lowered the rate"
    folder = setup_run(tmp_path / "run", module_prepared, **SCHEDULES[schedule])
    train_until(folder, module_prepared, epoch=kill_epoch(expected_curves), sig=sig)
    assert (folder / ".model.backup").is_dir()
    assert not (folder / "model").exists()

    result = train(folder, module_prepared)
    assert result.returncode == 0, result.stderr
    assert "resuming from the backup" in result.stderr
    epochs_logged = [int(e) for e in re.findall(rf"epoch (\d+)/{EPOCHS} ", result.stderr)]
    assert epochs_logged[0] > 1 and epochs_logged[-1] == EPOCHS
    assert not (folder / ".model.backup").exists()

    summary, curves, model = outcome(folder)
    assert summary == expected_summary and summary["epochs_run"] == EPOCHS
    assert curves.keys() == expected_curves.keys()
    for name, curve in curves.items():
        assert curve["step"].tolist() == list(range(EPOCHS)), name
        pd.testing.assert_frame_equal(curve, expected_curves[name], check_exact=True)
    for weights, expected in zip(model.get_weights(), expected_model.get_weights(), strict=True):
        np.testing.assert_array_equal(weights, expected)


@pytest.mark.slow
def test_backup_of_another_configuration_is_not_resumed(tmp_path, module_prepared):
    folder = setup_run(tmp_path / "run", module_prepared)
    train_until(folder, module_prepared, epoch=2, sig=signal.SIGKILL)
    params = json.loads((folder / "params.yaml").read_text())
    params["train"]["optimizer"]["learning_rate"] = 0.002
    (folder / "params.yaml").write_text(json.dumps(params))
    # as the lr_find stage would record the new rate
    (folder / "learning_rate.json").write_text(
        json.dumps({"learning_rate": 0.002, "source": "params"})
    )
    result = train(folder, module_prepared)
    assert result.returncode == 0, result.stderr
    assert "discarding a backup of a different configuration" in result.stderr
    assert f"epoch 1/{EPOCHS} " in result.stderr


@pytest.mark.slow
def test_kill_during_save_keeps_the_previous_model(tmp_path):
    """A real SIGKILL halfway through writing the zip of a `.keras` file."""
    script = f"""
import os, signal, sys, zipfile
import numpy as np
from typing import Any

import keras
sys.path.insert(0, {str(ROOT / "src")!r})
from mlpipe.modeling.models import save_model
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
save_model(model, "model.keras")
original = zipfile.ZipFile.close
def dying_close(self):
    # Killed with the archive's entries written but not its central directory.
    if self.mode == "w":
        self.fp.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self)
zipfile.ZipFile.close = dying_close
model.layers[0].kernel.assign(np.ones((3, 2)))
save_model(model, "model.keras")
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=stage_env())
    assert result.returncode == -signal.SIGKILL
    model = keras.models.load_model(tmp_path / "model.keras")
    assert not np.all(model.layers[0].kernel.numpy() == 1)
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers[-1] == "model.keras" and all(n.startswith(".") for n in leftovers[:-1])
    assert len(leftovers) == 2, "the half-written temporary file should be there to prove the kill"


def fake_backup(folder, latest_epoch, state_epoch, previous_epoch=None):
    """A backup folder laid out as Keras and ResumableBackup write it, with stand-in weights."""
    from mlpipe.training.resume import STATE_FILE
    from mlpipe.util.files import file_sha256, write_json

    folder.mkdir(exist_ok=True)
    (folder / "latest.weights.h5").write_text(f"weights {latest_epoch}")
    write_json(folder / "training_metadata.json", {"epoch": latest_epoch, "batch": 0})
    if previous_epoch is not None:
        (folder / "latest.weights.h5.bkp").write_text(f"weights {previous_epoch}")
        write_json(folder / "training_metadata.json.bkp", {"epoch": previous_epoch, "batch": 0})
    stand_in = folder / "sha.tmp"
    stand_in.write_text(f"weights {state_epoch}")
    state = {"epoch": state_epoch, "fingerprint": "run", "weights_sha256": file_sha256(stand_in)}
    stand_in.unlink()
    write_json(folder / STATE_FILE, {**state, "best_weights": None, "callbacks": []})


@pytest.mark.parametrize(
    ("latest", "state", "previous", "expected"),
    [
        (3, 3, 2, 3),  # a complete backup
        (4, 3, 3, 3),  # killed after Keras saved epoch 4, before the state: epoch 3 comes back
        (2, 3, 1, 0),  # state ahead of every weights file: start over
    ],
)
def test_backup_files_out_of_step_fall_back_or_start_over(
    tmp_path, latest, state, previous, expected
):
    from mlpipe.training.resume import ResumableBackup

    fake_backup(tmp_path / "backup", latest, state, previous)
    backup = ResumableBackup(tmp_path / "backup", "run", [])
    assert backup.resume_epoch() == expected
    if expected:
        assert (tmp_path / "backup/latest.weights.h5").read_text() == f"weights {expected}"
    else:
        assert not (tmp_path / "backup").exists()
    assert ResumableBackup(tmp_path / "other", "run", []).resume_epoch() == 0


def test_backup_of_another_fingerprint_is_discarded(tmp_path):
    from mlpipe.training.resume import ResumableBackup

    fake_backup(tmp_path / "backup", 3, 3, 2)
    assert ResumableBackup(tmp_path / "backup", "another run", []).resume_epoch() == 0
    assert not (tmp_path / "backup").exists()
