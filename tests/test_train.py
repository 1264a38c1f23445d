import json

import keras
import numpy as np
import pandas as pd
import pytest

from conftest import run_stage, tiny_params
from mlpipe import MlpipeError, data, models, runtime, training
from mlpipe.config import OptimizerParams


def fit_tiny(digits, tmp_path, **train):
    splits, schema = digits
    params = tiny_params(train=train)
    xy = {name: data.features_and_target(part, schema) for name, part in splits.items()}
    runtime.seed_everything(params.seed)
    model = models.build_model(params.model, schema, xy["train"][0])
    training.compile_model(model, params.train, schema)
    dirs = training.RunDirs(tmp_path / "best.keras", tmp_path / "tb", tmp_path / "live")
    return model, training.fit(model, params.train, xy, dirs), dirs, xy


def test_fit_learns_and_writes_checkpoint_and_curves(digits, tmp_path):
    _, summary, dirs, xy = fit_tiny(digits, tmp_path)
    assert summary["monitor"] == "val_loss"
    assert 1 <= summary["best_epoch"] <= summary["epochs_run"] <= 4
    best = keras.models.load_model(dirs.checkpoint)
    x_valid, y_valid = xy["valid"]
    accuracy = (best.predict(x_valid, verbose=0).argmax(axis=1) == y_valid).mean()
    assert accuracy > 0.85
    loss = best.evaluate(x_valid, y_valid, verbose=0, return_dict=True)["loss"]
    assert loss == pytest.approx(summary["best_monitor_value"], rel=1e-4)
    curve = pd.read_csv(dirs.dvclive / "plots/metrics/eval/loss.tsv", sep="\t")
    assert len(curve) == summary["epochs_run"]
    assert curve["loss"].min() == pytest.approx(summary["best_monitor_value"], rel=1e-4)
    assert (dirs.dvclive / "plots/metrics/train/accuracy.tsv").is_file()
    assert any(dirs.tensorboard.rglob("events.out.tfevents.*"))


def test_early_stopping_ends_the_run(digits, tmp_path):
    # No epoch can improve by 10 nats, so the run stops after `patience` further epochs.
    _, summary, _, _ = fit_tiny(
        digits, tmp_path, epochs=50, early_stopping={"patience": 1, "min_delta": 10.0}
    )
    assert summary["epochs_run"] == 2
    assert summary["best_epoch"] == 1


def test_same_seed_trains_identically(digits, tmp_path):
    first = fit_tiny(digits, tmp_path / "a")[1]
    second = fit_tiny(digits, tmp_path / "b")[1]
    assert first["best_monitor_value"] == second["best_monitor_value"]


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adam", "adamw", "nadam"])
def test_optimizer_from_params(name):
    optimizer = training.make_optimizer(OptimizerParams(name=name, learning_rate=0.02))
    assert type(optimizer).__name__.lower() == name
    assert float(optimizer.learning_rate) == pytest.approx(0.02)


def test_monitor_must_exist_for_the_task():
    regression = {"task": "regression", "classes": None}
    with pytest.raises(MlpipeError, match="val_rmse"):
        training.check_monitor(tiny_params(train={"monitor": "val_accuracy"}).train, regression)
    training.check_monitor(tiny_params(train={"monitor": "val_mae"}).train, regression)


def test_binary_and_regression_losses():
    assert training.loss_and_metrics({"task": "classification", "classes": [0, 1]})[0] == (
        "binary_crossentropy"
    )
    loss, metrics = training.loss_and_metrics({"task": "regression", "classes": None})
    assert loss == "mse" and [m.name for m in metrics] == ["rmse", "mae"]


def test_stage_replaces_model_only_when_training_succeeds(prepared_dir, tmp_path):
    (tmp_path / "params.yaml").write_text(json.dumps({**tiny_params().model_dump(mode="json")}))
    untrained = tmp_path / "untrained.keras"
    schema = data.read_schema(prepared_dir)
    x_train, _ = data.features_and_target(data.read_splits(prepared_dir)["train"], schema)
    models.save_model(models.build_model(tiny_params().model, schema, x_train), untrained)
    args = [str(prepared_dir), str(untrained), "model.keras", "train.json"]
    args += ["--dvclive", "live", "--tensorboard", "tb"]
    result = run_stage("train", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "train.json").read_text())
    assert set(summary) == {
        "epochs_run",
        "best_epoch",
        "monitor",
        "best_monitor_value",
        "train_seconds",
    }
    assert (tmp_path / "model.keras").is_file()
    assert not list(tmp_path.glob(".*checkpoint*"))
    assert (tmp_path / "tb" / "workspace").is_dir()

    # A bad monitor fails before training and leaves the previous model in place.
    before = (tmp_path / "model.keras").read_bytes()
    bad = tiny_params(train={"monitor": "val_rmse"}).model_dump(mode="json")
    (tmp_path / "params.yaml").write_text(json.dumps(bad))
    result = run_stage("train", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert "train.monitor" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "model.keras").read_bytes() == before
    assert np.isfinite(summary["best_monitor_value"])
