"""Data-parallel training (train.distribute): its params, the Keras patch, which rows the
workers see, and the train stage under MirroredStrategy on 2 logical CPUs and
MultiWorkerMirroredStrategy with 2 local workers, killed and resumed."""

import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import ROOT, stage_env, tiny_params, write_prepared
from mlpipe import MlpipeError, features
from mlpipe.modeling import models
from mlpipe.params import DistributeParams
from mlpipe.schema import read_schema, read_splits
from mlpipe.training import distribute, fit, keras_patch, lr_find
from mlpipe.training.batches import ShuffledBatches
from mlpipe.training.resume import ResumableBackup
from mlpipe.util import runtime

EPOCHS = 4
INPUTS = ("prepared", "untrained", "rate.json")


# Params and paths


def test_distribute_params_apply_only_to_their_strategy():
    for section, message in (
        ({"cpu_devices": 2}, "cpu_devices: 2 applies to strategy mirrored"),
        ({"local_workers": 2}, "local_workers: 2 applies to strategy multi_worker"),
        ({"strategy": "multi_worker", "local_workers": 1}, "local_workers: 1 is one process"),
    ):
        with pytest.raises(MlpipeError, match=message) as err:
            tiny_params(train={"distribute": section})
        assert "train.distribute" in str(err.value)
    assert tiny_params().train.distribute.strategy == "none"


def test_each_worker_has_its_own_paths_beside_the_chiefs():
    dirs = fit.RunDirs(
        Path("m/.model.checkpoint.weights.h5"), Path("tb/.ws.backup"), Path("l"), Path("m/.b")
    )
    mine = dirs.of_worker("worker-1")
    assert mine.checkpoint == Path("m/.model.worker-1.checkpoint.weights.h5")
    assert mine.tensorboard == Path("tb/.ws.worker-1.backup")
    assert mine.backup == Path("m/.b.worker-1")
    assert fit.RunDirs.inside(Path("t")).of_worker("worker-2").checkpoint == Path(
        "t/best.worker-2.weights.h5"
    )


def test_multi_worker_needs_a_cluster(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv(distribute.LOCAL_CHIEF_ENV, raising=False)
    with pytest.raises(distribute.DistributeError, match="no TF_CONFIG"):
        distribute.setup(DistributeParams(strategy="multi_worker"))
    monkeypatch.setenv("TF_CONFIG", "{}")
    with pytest.raises(distribute.DistributeError, match="TF_CONFIG is set"):
        distribute.setup(DistributeParams(strategy="multi_worker", local_workers=2))


def test_multi_worker_refuses_an_untested_keras(monkeypatch):
    monkeypatch.setattr(keras_patch, "TESTED_VERSIONS", ("3.0.0",))
    with pytest.raises(keras_patch.UnsupportedKeras, match=f"this is Keras {keras.__version__}"):
        distribute.setup(DistributeParams(strategy="multi_worker", local_workers=2))


def test_keras_patch_targets_are_still_there():
    """Fails when Keras changes under the patch: re-test it (test_patch_still_needed_...) and
    add the new version to keras_patch.TESTED_VERSIONS, or drop the patch once fixed upstream."""
    from keras.src.backend.tensorflow import trainer

    assert keras.__version__ in keras_patch.TESTED_VERSIONS, (
        f"Keras {keras.__version__} is not one the multi-worker patch was tested on"
    )
    assert list(inspect.signature(keras_patch._original_reduce).parameters) == [
        "values",
        "strategy",
        "reduction",
    ]
    assert list(inspect.signature(keras_patch._original_build).parameters) == [
        "self",
        "iterator",
        "data_batch",
    ]
    assert callable(trainer._collective_all_reduce_multi_worker)


def test_workers_whose_backups_disagree_start_over(digits, tmp_path, monkeypatch, caplog):
    splits, schema = digits
    params = tiny_params(train={"epochs": 2})
    dirs = fit.RunDirs.inside(tmp_path)

    def train(cluster=None) -> dict:
        runtime.seed_everything(params.seed)
        built = models.build_model(params.model, schema, splits["train"])
        rate = params.train.optimizer.learning_rate
        args = (built, params.train, splits, schema, dirs)
        return fit.train(*args, seed=params.seed, learning_rate=rate, cluster=cluster)[1]

    save = ResumableBackup._save_model

    def save_then_stop(self):
        save(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(ResumableBackup, "_save_model", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train()  # leaves the backup of epoch 1
    monkeypatch.undo()
    assert json.loads((dirs.backup / "mlpipe_state.json").read_text())["epoch"] == 1

    class Disagreeing(distribute.Cluster):
        def agree(self, value: int) -> bool:
            return False  # another worker backed up another epoch

    assert train(Disagreeing())["resumed_from_epoch"] == 0
    assert "every worker starts over" in caplog.text


# Two workers on loopback


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """What each of two workers of tests/distribute_probe.py recorded."""
    folder = tmp_path_factory.mktemp("probe")
    ports = ",".join(map(str, distribute._free_ports(2)))
    script = str(ROOT / "tests" / "distribute_probe.py")
    workers = [
        subprocess.Popen(
            [sys.executable, script, str(i), ports, str(folder / f"{i}.json")],
            env=stage_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    errors = [worker.communicate(timeout=300)[1] for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(e[-3000:] for e in errors)
    return [json.loads((folder / f"{i}.json").read_text()) for i in range(2)]


@pytest.mark.slow
def test_workers_together_see_the_training_batches_each_row_once_per_epoch(probe):
    rows, batch, epochs, seed = probe[0]["setup"]
    table = np.arange(rows, dtype=np.float32)[:, None]
    one_process = ShuffledBatches((table, table[:, 0]), batch, seed, 0, epochs, 1)
    expected = [x.numpy()[:, 0].tolist() for x, _ in one_process.dataset]
    assert [p["replicas"] for p in probe] == [2, 2]
    for epoch in range(epochs):
        seen = []
        for step, (first, second) in enumerate(
            zip(probe[0]["rows"][epoch], probe[1]["rows"][epoch], strict=True)
        ):
            # Each global batch is split between the workers: together, one process's batch.
            assert sorted(first + second) == sorted(
                expected[epoch * len(probe[0]["rows"][0]) + step]
            )
            assert first and second
            seen += first + second
        assert sorted(seen) == list(range(rows))  # each row once per epoch


@pytest.mark.slow
def test_patch_still_needed_and_makes_multi_worker_fit_train(probe):
    """Fails once Keras fixes keras-team/keras#20585 itself: then drop keras_patch."""
    for worker in probe:
        assert "Attempt to convert a value (PerReplica" in worker["unpatched"]
        loss = worker["patched_loss"]
        assert len(loss) == 2 and all(np.isfinite(loss)) and loss[1] < loss[0]
    assert probe[0]["patched_loss"] == probe[1]["patched_loss"]  # all-reduced logs agree


# The train stage


def stage_folder(folder: Path, digits, like: Path | None = None) -> Path:
    """A folder with prepared digits, an untrained model and a learning-rate record: those of
    folder `like` if given."""
    if like is not None:
        folder.mkdir(parents=True)
        for name in INPUTS:
            copy = shutil.copytree if (like / name).is_dir() else shutil.copyfile
            copy(like / name, folder / name)
        return folder
    folder.mkdir(parents=True)
    params = tiny_params()
    prepared = write_prepared(folder / "prepared", digits)
    schema, train = read_schema(prepared), read_splits(prepared)["train"]
    models.save_model_folder(models.build_model(params.model, schema, train), folder / "untrained")
    record = lr_find.learning_rate_record(params.train.optimizer, None)
    (folder / "rate.json").write_text(json.dumps(record))
    return folder


def start_train(folder: Path, distribute_section: dict) -> subprocess.Popen:
    params = tiny_params(train={"epochs": EPOCHS, "distribute": distribute_section})
    (folder / "params.yaml").write_text(json.dumps(params.model_dump(mode="json")))
    args = ["prepared", "untrained", "model", "train.json", "--dvclive", "live"]
    args += ["--tensorboard", "tb", "--learning-rate", "rate.json"]
    command = [sys.executable, str(ROOT / "stages" / "train.py"), *args]
    return subprocess.Popen(command, cwd=folder, env=stage_env(), stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> str:
    stderr = process.communicate(timeout=600)[1]
    assert process.returncode == 0, stderr[-4000:]
    return stderr


def weights(folder: Path) -> list[np.ndarray]:
    return models.load_model_folder(folder / "model").get_weights()


def valid_accuracy(model: keras.Model, folder: Path) -> float:
    preprocessor, network = models.split_model(model)
    splits = read_splits(folder / "prepared", ("valid",))
    x, y = features.matrices(preprocessor, splits, read_schema(folder / "prepared"))["valid"]
    return float((network.predict(x, verbose=0).argmax(axis=1) == y).mean())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits):
    """The train stage's folder after mirrored (2 CPUs) and multi_worker (2 local workers)."""
    root = tmp_path_factory.mktemp("runs")
    mirrored = stage_folder(root / "mirrored", digits)
    folders = {
        "mirrored": mirrored,
        "multi_worker": stage_folder(root / "multi_worker", digits, like=mirrored),
    }
    logs = {
        "mirrored": finish(
            start_train(folders["mirrored"], {"strategy": "mirrored", "cpu_devices": 2})
        ),
        "multi_worker": finish(
            start_train(folders["multi_worker"], {"strategy": "multi_worker", "local_workers": 2})
        ),
    }
    return folders, logs


@pytest.mark.slow
def test_mirrored_and_multi_worker_train_as_one_process(runs, digits, tmp_path):
    folders, logs = runs
    assert "strategy mirrored: 1 worker(s), 2 replica(s) in sync" in logs["mirrored"]
    assert "strategy multi_worker: 2 worker(s), 2 replica(s) in sync" in logs["multi_worker"]
    # The same two replicas of 16 rows a step, on one machine or two processes: same bits.
    for a, b in zip(weights(folders["mirrored"]), weights(folders["multi_worker"]), strict=True):
        np.testing.assert_array_equal(a, b)

    # One process sums the same gradients in another order: close weights, same accuracy.
    splits, schema = digits
    params = tiny_params(train={"epochs": EPOCHS})
    runtime.seed_everything(params.seed)
    single, _ = fit.train(
        models.load_model_folder(folders["mirrored"] / "untrained"),
        params.train,
        splits,
        schema,
        fit.RunDirs.inside(tmp_path),
        seed=params.seed,
        learning_rate=params.train.optimizer.learning_rate,
    )
    for a, b in zip(single.get_weights(), weights(folders["multi_worker"]), strict=True):
        np.testing.assert_allclose(a, b, atol=0.02)
    accuracy = valid_accuracy(single, folders["mirrored"])
    distributed = valid_accuracy(
        models.load_model_folder(folders["multi_worker"] / "model"), folders["multi_worker"]
    )
    assert accuracy > 0.85
    assert distributed == pytest.approx(accuracy, abs=0.02)

    # The chief alone wrote outputs, curves and logs; the worker left nothing behind.
    folder = folders["multi_worker"]
    summary = json.loads((folder / "train.json").read_text())
    assert summary["epochs_run"] == EPOCHS and summary["resumed_from_epoch"] == 0
    curve = (folder / "live/plots/metrics/eval/loss.tsv").read_text().splitlines()
    assert len(curve) == 1 + EPOCHS
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


def backup_epoch(folder: Path) -> int:
    try:
        return json.loads((folder / "mlpipe_state.json").read_text())["epoch"]
    except (OSError, ValueError):
        return 0


@pytest.mark.slow
def test_killed_worker_stops_the_run_and_the_rerun_resumes_to_the_same_weights(
    runs, digits, tmp_path
):
    folder = stage_folder(tmp_path / "killed", digits, like=runs[0]["mirrored"])
    section = {"strategy": "multi_worker", "local_workers": 2}
    chief = start_train(folder, section)
    chief_backup, worker_backup = folder / ".model.backup", folder / ".model.worker-1.backup"
    # Both have backed up epoch 2, and the third takes far longer than this loop's 20 ms.
    while min(backup_epoch(chief_backup), backup_epoch(worker_backup)) < 2:
        assert chief.poll() is None, chief.communicate()[1][-3000:]
        time.sleep(0.02)
    children = Path(f"/proc/{chief.pid}/task/{chief.pid}/children").read_text().split()
    os.kill(int(children[0]), signal.SIGKILL)
    stderr = chief.communicate(timeout=120)[1]
    # The all-reduce fails, or the chief's watchdog sees the worker gone: either way, a clear
    # error and no traceback.
    assert chief.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "another worker stopped" in stderr or "exited with code -9" in stderr
    assert not (folder / "model").exists()

    stderr = finish(start_train(folder, section))
    assert json.loads((folder / "train.json").read_text())["resumed_from_epoch"] >= 2
    uninterrupted = weights(runs[0]["multi_worker"])
    for a, b in zip(weights(folder), uninterrupted, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not (folder / ".model.worker-1.backup").exists() and not chief_backup.exists()
