import json

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from conftest import run_stage, tiny_params
from mlpipe import MlpipeError, dataset, features
from mlpipe.modeling import models
from mlpipe.params import learning_rate_record
from mlpipe.training import callbacks, loop
from mlpipe.util import runtime


def fit_tiny(digits, tmp_path, **train):
    splits, schema = digits
    params = tiny_params(train=train)
    runtime.seed_everything(params.seed)
    built = models.build_model(params.model, schema, splits["train"])
    preprocessor, model = models.split_model(built)
    xy = features.matrices(preprocessor, splits, schema)
    steps = loop.steps(len(xy["train"][1]), params.train.batch_size)
    loop.compile_model(model, params.train, schema, steps)
    dirs = loop.RunDirs(
        tmp_path / "best.weights.h5", tmp_path / "tb", tmp_path / "live", tmp_path / "backup"
    )
    summary = loop.fit(model, params.train, xy, dirs, params.seed, "tiny")
    return model, summary, dirs, xy


def test_fit_learns_and_writes_checkpoint_and_curves(digits, tmp_path):
    best, summary, dirs, xy = fit_tiny(digits, tmp_path)
    assert summary["monitor"] == "val_loss"
    assert 1 <= summary["best_epoch"] <= summary["epochs_run"] <= 4
    best.load_weights(dirs.checkpoint)
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


@pytest.mark.slow
def test_same_seed_trains_identically(digits, tmp_path):
    first = fit_tiny(digits, tmp_path / "a")[1]
    second = fit_tiny(digits, tmp_path / "b")[1]
    assert first["best_monitor_value"] == second["best_monitor_value"]


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adam", "adamw", "nadam"])
def test_optimizer_from_params(name):
    train = tiny_params(train={"optimizer": {"name": name, "learning_rate": 0.02}}).train
    optimizer = loop.make_optimizer(train, steps_per_epoch=10)
    assert type(optimizer).__name__.lower() == name
    assert float(optimizer.learning_rate) == pytest.approx(0.02)


def test_each_optimizer_gets_its_own_settings():
    sgd = {"name": "sgd", "sgd": {"momentum": 0.9, "nesterov": True}}
    optimizer = loop.make_optimizer(tiny_params(train={"optimizer": sgd}).train, 10)
    assert optimizer.momentum == pytest.approx(0.9) and optimizer.nesterov is True
    adamw = {"name": "adamw", "adamw": {"weight_decay": 0.01, "beta_1": 0.8}}
    optimizer = loop.make_optimizer(tiny_params(train={"optimizer": adamw}).train, 10)
    assert optimizer.weight_decay == pytest.approx(0.01) and optimizer.beta_1 == pytest.approx(0.8)
    # Settings of the optimizers not chosen are kept but unused.
    assert not hasattr(optimizer, "nesterov")


def test_monitor_must_exist_for_the_task():
    regression = {"task": "regression", "classes": None}
    with pytest.raises(MlpipeError, match="val_rmse"):
        loop.check_monitor(tiny_params(train={"monitor": "val_accuracy"}).train, regression)
    loop.check_monitor(tiny_params(train={"monitor": "val_mae"}).train, regression)


def test_binary_and_regression_losses():
    assert loop.loss_and_metrics({"task": "classification", "classes": [0, 1]})[0] == (
        "binary_crossentropy"
    )
    loss, metrics = loop.loss_and_metrics({"task": "regression", "classes": None})
    assert loss == "mse" and [m.name for m in metrics] == ["rmse", "mae"]


@pytest.mark.slow
def test_stage_replaces_model_only_when_training_succeeds(prepared_dir, tmp_path):
    (tmp_path / "params.yaml").write_text(json.dumps({**tiny_params().model_dump(mode="json")}))
    untrained = tmp_path / "untrained"
    schema = dataset.read_schema(prepared_dir)
    train = dataset.read_splits(prepared_dir)["train"]
    models.save_model_folder(models.build_model(tiny_params().model, schema, train), untrained)
    args = [str(prepared_dir), str(untrained), "model", "train.json"]
    args += ["--dvclive", "live", "--tensorboard", "tb", "--learning-rate", "rate.json"]
    record = learning_rate_record(tiny_params().train.optimizer, None)
    (tmp_path / "rate.json").write_text(json.dumps(record))
    result = run_stage("train", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "TensorFlow ops use 1 thread(s) each" in result.stderr  # batch 32: op_threads auto
    summary = json.loads((tmp_path / "train.json").read_text())
    assert set(summary) == {
        "epochs_run",
        "best_epoch",
        "monitor",
        "best_monitor_value",
        "train_seconds",
        "resumed_from_epoch",
    }
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["model.keras"]
    assert not list(tmp_path.glob(".*checkpoint*"))
    assert (tmp_path / "tb" / "workspace").is_dir()

    # A bad monitor fails before training and leaves the previous model in place.
    before = (tmp_path / "model" / "model.keras").read_bytes()
    bad = tiny_params(train={"monitor": "val_rmse"}).model_dump(mode="json")
    (tmp_path / "params.yaml").write_text(json.dumps(bad))
    result = run_stage("train", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert "train.monitor" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "model" / "model.keras").read_bytes() == before
    assert np.isfinite(summary["best_monitor_value"])


def schedule(name, epochs=10, **settings):
    cfg = {"name": name, **({name: settings} if settings else {})}
    lr = {"learning_rate": 0.1}
    return tiny_params(train={"epochs": epochs, "lr_schedule": cfg, "optimizer": lr}).train


def test_exponential_and_cosine_decay_per_step():
    rate = loop.learning_rate(schedule("exponential", decay_rate=0.5, decay_epochs=2), 10)
    assert float(rate(0)) == pytest.approx(0.1)
    assert float(rate(20)) == pytest.approx(0.05)  # two epochs of ten steps halve it
    rate = loop.learning_rate(schedule("cosine", alpha=0.1), 10)
    assert float(rate(50)) == pytest.approx(0.1 * (0.1 + 0.9 * 0.5), rel=1e-5)
    assert float(rate(100)) == pytest.approx(0.01, rel=1e-5)
    assert loop.learning_rate(schedule("none"), 10) == 0.1


def test_one_cycle_warms_up_to_the_peak_then_anneals():
    (cycle,) = loop.schedule_callbacks(schedule("one_cycle", warmup_fraction=0.25), 10)
    assert cycle.rate(0) == pytest.approx(0.1 / 25)
    assert cycle.rate(25) == pytest.approx(0.1)
    assert cycle.rate(100) == pytest.approx(0.1 / 25 / 1e4)
    rates = [cycle.rate(step) for step in range(101)]
    assert rates.index(max(rates)) == 25


def test_plateau_schedule_watches_the_monitor():
    (plateau,) = loop.schedule_callbacks(schedule("plateau", factor=0.2, patience=1), 10)
    assert plateau.monitor == "val_loss" and plateau.factor == pytest.approx(0.2)


def test_learning_rate_and_overfit_ratio_are_logged_each_epoch(digits, tmp_path):
    _, summary, dirs, _ = fit_tiny(
        digits, tmp_path, lr_schedule={"name": "exponential", "exponential": {"decay_epochs": 1}}
    )
    curves = dirs.dvclive / "plots/metrics/train"
    rates = pd.read_csv(curves / "learning_rate.tsv", sep="\t")["learning_rate"]
    assert len(rates) == summary["epochs_run"]
    assert rates.iloc[0] == pytest.approx(0.001 * 0.5, rel=1e-3)  # after one epoch of steps
    assert rates.is_monotonic_decreasing
    ratio = pd.read_csv(curves / "overfit_ratio.tsv", sep="\t")["overfit_ratio"]
    loss = pd.read_csv(curves / "loss.tsv", sep="\t")["loss"]
    val_loss = pd.read_csv(dirs.dvclive / "plots/metrics/eval/loss.tsv", sep="\t")["loss"]
    np.testing.assert_allclose(ratio, val_loss / loss, rtol=1e-4)
    writers = {p.parent.name for p in dirs.tensorboard.rglob("events.out.tfevents.*")}
    assert writers == {"train", "validation"}
    tags = set()
    for events in (dirs.tensorboard / "train").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            tags |= {value.tag for value in event.summary.value}
    assert {"epoch_learning_rate", "epoch_overfit_ratio", "epoch_loss"} <= tags


@pytest.mark.parametrize(
    ("steps_per_execution", "where"), [(1, r"batch \d+ "), ("auto", r"batches 1-40 ")]
)
def test_diverging_loss_fails_with_epoch_and_batch(digits, tmp_path, steps_per_execution, where):
    optimizer = {"name": "sgd", "learning_rate": 1e6}
    with pytest.raises(callbacks.TrainingDiverged, match=rf"loss became nan at epoch 1, {where}"):
        fit_tiny(digits, tmp_path, optimizer=optimizer, steps_per_execution=steps_per_execution)
    # No weights of the diverged run are kept: no checkpoint (fit_tiny's best.weights.h5), no
    # temporary file beside it, nothing in the backup.
    assert sorted(p.name for p in tmp_path.rglob("*.weights.h5")) == []


def test_op_threads_auto_rule():
    assert runtime.op_threads("auto", batch_size=32) == 1
    assert runtime.op_threads("auto", batch_size=512) == 1
    assert runtime.op_threads("auto", batch_size=513) == 0  # TensorFlow's default: all cores
    assert runtime.op_threads(4, batch_size=32) == 4
    with pytest.raises(MlpipeError, match=r"train\.op_threads"):
        tiny_params(train={"op_threads": -1})


def test_steps_per_execution_auto_rule():
    def chosen(**train):
        return loop.steps_per_execution(tiny_params(train=train).train, steps_per_epoch=300)

    assert chosen() == 128
    assert loop.steps_per_execution(tiny_params().train, steps_per_epoch=40) == 40
    assert chosen(lr_schedule={"name": "one_cycle"}) == 1
    assert chosen(steps_per_execution=7) == 7
    with pytest.raises(MlpipeError, match="one_cycle sets the learning rate before every batch"):
        tiny_params(train={"lr_schedule": {"name": "one_cycle"}, "steps_per_execution": 8})


@pytest.mark.slow
def test_steps_per_execution_does_not_change_what_is_learned(digits, tmp_path):
    # 40 batches per epoch: groups of 7 leave a group of 5 at the end of each epoch, which
    # must not borrow batches from the next one.
    def curve(spe):
        model, summary, dirs, xy = fit_tiny(
            digits, tmp_path / str(spe), steps_per_execution=spe, epochs=3
        )
        assert loop.steps(len(xy["train"][1]), 32) == 40
        assert int(model.optimizer.iterations.numpy()) == 3 * 40
        assert summary["epochs_run"] == 3
        return pd.read_csv(dirs.dvclive / "plots/metrics/eval/loss.tsv", sep="\t")["loss"]

    one = curve(1)
    for spe in (7, "auto"):
        np.testing.assert_allclose(curve(spe), one, rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 42])
@pytest.mark.parametrize("steps_per_execution", [3, 2])  # 3 batches per epoch: one stream
def test_each_epoch_is_shuffled_by_seed_and_epoch_alone(seed, steps_per_execution):
    x = np.arange(20, dtype="float32").reshape(10, 2)
    y = np.arange(10)

    def epochs(first):
        """Labels of each batch, per epoch from `first` to 3, as fit would read them."""
        batches = loop.ShuffledBatches((x, y), 4, seed, first, 4, steps_per_execution)
        if batches.steps_per_epoch:  # one stream of every epoch
            assert batches.steps_per_epoch == 3
            labels = [b[1].tolist() for b in batches.dataset.as_numpy_iterator()]
            return [labels[i : i + 3] for i in range(0, len(labels), 3)]
        assert batches.dataset.cardinality() == 3  # one epoch, passed over once per epoch
        passes = []
        for number in range(first, 4):
            batches.on_epoch_begin(number)
            passes.append([b[1].tolist() for b in batches.dataset.as_numpy_iterator()])
        return passes

    from_start = epochs(0)
    assert len(from_start) == 4
    for labels in from_start:
        assert [len(b) for b in labels] == [4, 4, 2]  # epochs end where their rows do
        assert sorted(np.concatenate(labels).tolist()) == list(range(10))  # every row once
    assert from_start[0] != from_start[1]
    assert epochs(2) == from_start[2:]  # epoch k's batches, whatever came before
    one_pass = loop.ShuffledBatches((x, y), 4, seed, 0, 1, steps_per_execution)
    batch = next(one_pass.dataset.as_numpy_iterator())
    np.testing.assert_array_equal(batch[0][:, 0], batch[1] * 2)  # rows stay whole


def test_both_kinds_of_stream_give_the_same_batches():
    x = np.arange(20, dtype="float32").reshape(10, 2)
    y = np.arange(10)
    stream = loop.ShuffledBatches((x, y), 4, 5, 0, 2, 3)
    passes = loop.ShuffledBatches((x, y), 4, 5, 0, 2, 2)
    streamed = [b[1].tolist() for b in stream.dataset.as_numpy_iterator()]
    passed = []
    for number in range(2):
        passes.on_epoch_begin(number)
        passed += [b[1].tolist() for b in passes.dataset.as_numpy_iterator()]
    assert streamed == passed


def test_an_unresolved_auto_rate_never_reaches_the_optimizer():
    train = tiny_params(train={"optimizer": {"learning_rate": "auto"}}).train
    with pytest.raises(MlpipeError, match="lr_find"):
        loop.make_optimizer(train, steps_per_epoch=10)
