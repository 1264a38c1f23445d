import json

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from conftest import run_stage, tiny_params
from mlpipe import MlpipeError, features
from mlpipe.modeling import models
from mlpipe.schema import Schema, read_schema, read_splits
from mlpipe.training import batches, callbacks, fit, losses, lr_find, members, optimizers, precision
from mlpipe.util import runtime


def fit_tiny(digits, tmp_path, **train):
    """The train operation on digits with tiny params: (the best epoch's network, the summary,
    the run's folders, the features and labels of each split)."""
    splits, schema = digits
    params = tiny_params(train=train)
    runtime.seed_everything(params.seed)
    built = models.build_model(params.model, schema, splits["train"])
    dirs = fit.RunDirs.inside(tmp_path)
    rate = params.train.optimizer.learning_rate
    best, summary = fit.train(
        built, params.train, splits, schema, dirs, seed=params.seed, learning_rate=rate
    )
    preprocessor, network = models.split_model(best)
    return network, summary, dirs, features.matrices(preprocessor, splits, schema)


def test_fit_learns_and_writes_checkpoint_and_curves(digits, tmp_path):
    best, summary, dirs, xy = fit_tiny(digits, tmp_path)
    assert summary["monitor"] == "val_loss"
    assert 1 <= summary["best_epoch"] <= summary["epochs_run"] <= 4
    assert not dirs.checkpoint.exists()  # its weights are the model's
    x_valid, y_valid = xy["valid"]
    accuracy = (best.predict(x_valid, verbose=0).argmax(axis=1) == y_valid).mean()
    assert accuracy > 0.85
    predicted = best.predict(x_valid, verbose=0)
    loss = float(keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y_valid, predicted)))
    assert loss == pytest.approx(summary["best_monitor_value"], rel=1e-4)
    assert not best.compiled  # no optimizer state is saved with it
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
    optimizer = optimizers.build_optimizer(train.optimizer, 0.02)
    assert type(optimizer).__name__.lower() == name
    assert float(optimizer.learning_rate) == pytest.approx(0.02)


def test_each_optimizer_gets_its_own_settings():
    sgd = {"name": "sgd", "sgd": {"momentum": 0.9, "nesterov": True}}
    optimizer = optimizers.build_optimizer(
        tiny_params(train={"optimizer": sgd}).train.optimizer, 0.1
    )
    assert optimizer.momentum == pytest.approx(0.9) and optimizer.nesterov is True
    adamw = {"name": "adamw", "adamw": {"weight_decay": 0.01, "beta_1": 0.8}}
    optimizer = optimizers.build_optimizer(
        tiny_params(train={"optimizer": adamw}).train.optimizer, 0.1
    )
    assert optimizer.weight_decay == pytest.approx(0.01) and optimizer.beta_1 == pytest.approx(0.8)
    # Settings of the optimizers not chosen are kept but unused.
    assert not hasattr(optimizer, "nesterov")


def test_monitor_must_exist_for_the_task():
    regression = Schema(features=(), target="y", task="regression")
    with pytest.raises(MlpipeError, match="val_rmse"):
        losses.check_monitor(tiny_params(train={"monitor": "val_accuracy"}).train, regression)
    losses.check_monitor(tiny_params(train={"monitor": "val_mae"}).train, regression)


def test_binary_and_regression_losses():
    binary = Schema(features=(), target="y", task="classification", classes=(0, 1))
    assert losses.loss_and_metrics(binary)[0] == "binary_crossentropy"
    loss, metrics = losses.loss_and_metrics(Schema(features=(), target="y", task="regression"))
    assert loss == "mse" and [m.name for m in metrics] == ["rmse", "mae"]


@pytest.mark.slow
def test_stage_replaces_model_only_when_training_succeeds(prepared_dir, tmp_path):
    (tmp_path / "params.yaml").write_text(json.dumps({**tiny_params().model_dump(mode="json")}))
    untrained = tmp_path / "untrained"
    schema = read_schema(prepared_dir)
    train = read_splits(prepared_dir)["train"]
    models.save_model_folder(models.build_model(tiny_params().model, schema, train), untrained)
    args = [str(prepared_dir), str(untrained), "model", "train.json"]
    args += ["--dvclive", "live", "--tensorboard", "tb", "--learning-rate", "rate.json"]
    record = lr_find.learning_rate_record(tiny_params().train.optimizer, None)
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
        "resumed_from_epoch",
    }
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["model.keras"]
    assert not list(tmp_path.glob(".*checkpoint*"))
    # The curves, grown beside their outputs, took their places.
    assert (tmp_path / "tb" / "workspace").is_dir() and (tmp_path / "live/metrics.json").is_file()
    assert not list(tmp_path.glob(".*")) and not list((tmp_path / "tb").glob(".*"))

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
    rate = optimizers.schedule(schedule("exponential", decay_rate=0.5, decay_epochs=2), 0.1, 10)
    assert float(rate(0)) == pytest.approx(0.1)
    assert float(rate(20)) == pytest.approx(0.05)  # two epochs of ten steps halve it
    rate = optimizers.schedule(schedule("cosine", alpha=0.1), 0.1, 10)
    assert float(rate(50)) == pytest.approx(0.1 * (0.1 + 0.9 * 0.5), rel=1e-5)
    assert float(rate(100)) == pytest.approx(0.01, rel=1e-5)
    assert optimizers.schedule(schedule("none"), 0.1, 10) == 0.1
    assert optimizers.schedule(schedule("plateau"), 0.1, 10) == 0.1


def test_one_cycle_warms_up_to_the_peak_then_anneals():
    cycle = optimizers.schedule(schedule("one_cycle", warmup_fraction=0.25), 0.1, 10)
    assert float(cycle(0)) == pytest.approx(0.1 / 25)
    assert float(cycle(25)) == pytest.approx(0.1)
    assert float(cycle(100)) == pytest.approx(0.1 / 25 / 1e4)
    assert float(cycle(150)) == pytest.approx(0.1 / 25 / 1e4)  # past the end: stays there
    rates = [float(cycle(step)) for step in range(101)]
    assert rates.index(max(rates)) == 25
    assert rates[:26] == sorted(rates[:26]) and rates[25:] == sorted(rates[25:], reverse=True)


def test_one_cycle_is_saved_and_loaded_with_a_compiled_model(tmp_path):
    cycle = optimizers.schedule(schedule("one_cycle"), 0.1, 10)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(
        optimizer=optimizers.build_optimizer(schedule("one_cycle").optimizer, cycle), loss="mse"
    )
    model.fit(np.ones((8, 3)), np.ones(8), batch_size=4, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    again = loaded.optimizer._learning_rate
    assert isinstance(again, optimizers.OneCycle) and again.get_config() == cycle.get_config()
    # The step count comes back with the optimizer, and with it the rate.
    assert int(loaded.optimizer.iterations.numpy()) == 2
    assert float(loaded.optimizer.learning_rate) == float(cycle(2))


def test_plateau_schedule_watches_the_monitor():
    (plateau,) = optimizers.schedule_callbacks(schedule("plateau", factor=0.2, patience=1))
    assert plateau.monitor == "val_loss" and plateau.factor == pytest.approx(0.2)
    assert optimizers.schedule_callbacks(schedule("one_cycle")) == []


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
    dirs = fit.RunDirs.inside(tmp_path)
    assert not dirs.checkpoint.exists() and not dirs.backup.exists()  # nothing to resume from


def test_op_threads_auto_rule():
    assert runtime.op_threads("auto", batch_size=32) == 1
    assert runtime.op_threads("auto", batch_size=512) == 1
    assert runtime.op_threads("auto", batch_size=513) == 0  # TensorFlow's default: all cores
    assert runtime.op_threads(4, batch_size=32) == 4
    with pytest.raises(MlpipeError, match=r"train\.op_threads"):
        tiny_params(train={"op_threads": -1})


def test_steps_per_execution_auto_rule():
    def chosen(**train):
        return fit.steps_per_execution(tiny_params(train=train).train, steps_per_epoch=300)

    assert chosen() == 128
    assert fit.steps_per_execution(tiny_params().train, steps_per_epoch=40) == 40
    assert chosen(lr_schedule={"name": "one_cycle"}) == 128  # a schedule of the step count
    assert chosen(steps_per_execution=7) == 7
    assert chosen(lr_schedule={"name": "one_cycle"}, steps_per_execution=8) == 8


def learning_curves(digits, folder, **train) -> tuple[pd.Series, pd.Series]:
    """The per-epoch learning rate and validation loss of a 3-epoch run."""
    _, summary, dirs, xy = fit_tiny(digits, folder, epochs=3, **train)
    assert batches.steps(len(xy["train"][1]), 32) == 40
    assert summary["epochs_run"] == 3
    rate = pd.read_csv(dirs.dvclive / "plots/metrics/train/learning_rate.tsv", sep="\t")
    loss = pd.read_csv(dirs.dvclive / "plots/metrics/eval/loss.tsv", sep="\t")
    return rate["learning_rate"], loss["loss"]


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["none", "one_cycle"])
def test_steps_per_execution_does_not_change_what_is_learned(digits, tmp_path, schedule):
    # 40 batches per epoch: groups of 7 leave a group of 5 at the end of each epoch, which
    # must not borrow batches from the next one. Under one_cycle the rate follows the step
    # count within each call into TensorFlow as well.
    settings = {"lr_schedule": {"name": schedule}}
    rates, one = learning_curves(digits, tmp_path / "1", steps_per_execution=1, **settings)
    # The rate logged after epoch k is the schedule's at the step count reached, 40 k.
    rate = optimizers.schedule(tiny_params(train={"epochs": 3, **settings}).train, 0.001, 40)
    expected = [float(rate(40 * epoch)) if schedule != "none" else 0.001 for epoch in (1, 2, 3)]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)
    if schedule == "one_cycle":
        assert rates.iloc[0] > 0.001 / 25 and rates.iloc[2] < rates.iloc[1] < 0.001  # it cycles
    for spe in (7, "auto"):
        again, loss = learning_curves(
            digits, tmp_path / str(spe), steps_per_execution=spe, **settings
        )
        pd.testing.assert_series_equal(again, rates)  # 40 steps an epoch, whatever the calls
        np.testing.assert_allclose(loss, one, rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 42])
@pytest.mark.parametrize("steps_per_execution", [3, 2])  # 3 batches per epoch: one stream
def test_each_epoch_is_shuffled_by_seed_and_epoch_alone(seed, steps_per_execution):
    x = np.arange(20, dtype="float32").reshape(10, 2)
    y = np.arange(10)

    def epochs(first):
        """Labels of each batch, per epoch from `first` to 3, as fit would read them."""
        shuffled = batches.ShuffledBatches((x, y), 4, seed, first, 4, steps_per_execution)
        if shuffled.steps_per_epoch:  # one stream of every epoch
            assert shuffled.steps_per_epoch == 3
            labels = [b[1].tolist() for b in shuffled.dataset.as_numpy_iterator()]
            return [labels[i : i + 3] for i in range(0, len(labels), 3)]
        assert shuffled.dataset.cardinality() == 3  # one epoch, passed over once per epoch
        passes = []
        for number in range(first, 4):
            shuffled.on_epoch_begin(number)
            passes.append([b[1].tolist() for b in shuffled.dataset.as_numpy_iterator()])
        return passes

    from_start = epochs(0)
    assert len(from_start) == 4
    for labels in from_start:
        assert [len(b) for b in labels] == [4, 4, 2]  # epochs end where their rows do
        assert sorted(np.concatenate(labels).tolist()) == list(range(10))  # every row once
    assert from_start[0] != from_start[1]
    assert epochs(2) == from_start[2:]  # epoch k's batches, whatever came before
    one_pass = batches.ShuffledBatches((x, y), 4, seed, 0, 1, steps_per_execution)
    batch = next(one_pass.dataset.as_numpy_iterator())
    np.testing.assert_array_equal(batch[0][:, 0], batch[1] * 2)  # rows stay whole


def test_both_kinds_of_stream_give_the_same_batches():
    x = np.arange(20, dtype="float32").reshape(10, 2)
    y = np.arange(10)
    stream = batches.ShuffledBatches((x, y), 4, 5, 0, 2, 3)
    passes = batches.ShuffledBatches((x, y), 4, 5, 0, 2, 2)
    streamed = [b[1].tolist() for b in stream.dataset.as_numpy_iterator()]
    passed = []
    for number in range(2):
        passes.on_epoch_begin(number)
        passed += [b[1].tolist() for b in passes.dataset.as_numpy_iterator()]
    assert streamed == passed


def test_an_unresolved_auto_rate_never_reaches_the_optimizer():
    train = tiny_params(train={"optimizer": {"learning_rate": "auto"}}).train
    with pytest.raises(MlpipeError, match="lr_find"):
        optimizers.schedule(train, train.optimizer.learning_rate, steps_per_epoch=10)


def test_a_backup_is_resumed_only_at_the_same_rate():
    # Under `auto` the params do not change when the range test suggests another rate.
    auto = tiny_params(train={"optimizer": {"learning_rate": "auto"}}).train
    assert fit.fingerprint(auto, 7, 0.001) == fit.fingerprint(auto, 7, 0.001)
    assert fit.fingerprint(auto, 7, 0.001) != fit.fingerprint(auto, 7, 0.002)
    assert fit.fingerprint(auto, 7, 0.001) != fit.fingerprint(auto, 8, 0.001)


def network_of(digits, **model) -> keras.Model:
    splits, schema = digits
    params = tiny_params(model=model)
    runtime.seed_everything(params.seed)
    return models.split_model(models.build_model(params.model, schema, splits["train"]))[1]


@pytest.mark.parametrize(
    "model, heads",
    [
        ({}, None),  # a Sequential stack: its last layer
        ({"api": "functional", "aux_output": True}, ["aux", "main"]),
        ({"api": "subclass", "aux_output": True}, ["aux", "main"]),
        ({"ensemble_size": 2, "ensemble_weights": "independent"}, ["ensemble_output"]),
    ],
)
def test_the_heads_are_the_layers_that_give_the_outputs(digits, model, heads):
    network = network_of(digits, **model)
    trained = members.members_view(network) or network
    found = sorted(layer.name for layer in precision.head_layers(trained))
    assert found == (heads or [network.layers[-1].name])


def test_mixed_bfloat16_computes_all_but_the_heads_in_bfloat16(digits):
    network = network_of(digits, hidden_units=[32, 16], dropout=0.1)
    x = np.ones((2, network.input_shape[-1]), np.float32)
    with precision.computing_in(network, "mixed_bfloat16"):
        assert network.layers[0](x).dtype == "bfloat16"
        assert network(x).dtype == "float32"
        assert [layer.compute_dtype for layer in network.layers] == ["bfloat16"] * 4 + ["float32"]
    assert {layer.compute_dtype for layer in network.layers} == {"float32"}


@pytest.mark.slow
def test_mixed_bfloat16_trains_reproducibly_and_saves_a_float32_model(digits, tmp_path):
    (bf16, summary, _, xy), again = (
        fit_tiny(digits, tmp_path / name, precision="mixed_bfloat16") for name in "ab"
    )
    float32 = fit_tiny(digits, tmp_path / "float32")[0]
    x_valid, y_valid = xy["valid"]
    predicted = bf16.predict(x_valid, verbose=0)
    assert predicted.dtype == np.float32
    assert {layer.compute_dtype for layer in bf16._flatten_layers()} == {"float32"}
    assert (predicted.argmax(axis=1) == y_valid).mean() > 0.85
    # Trained in bfloat16: other weights than float32 training, the same on every run
    kernel = bf16.layers[0].kernel.numpy()
    assert not np.array_equal(kernel, float32.layers[0].kernel.numpy())
    assert np.array_equal(kernel, again[0].layers[0].kernel.numpy())
    assert summary["best_monitor_value"] == again[1]["best_monitor_value"]
