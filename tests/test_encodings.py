"""The tabular options of the model: robust scaling, periodic embeddings, categorical
embeddings, the ensemble, the standardized target, and monitoring ROC AUC."""

import keras
import numpy as np
import pandas as pd
import pytest

from conftest import predict_in_plain_keras, tiny_params
from mlpipe import dataset, features
from mlpipe.modeling import encodings, models
from mlpipe.params import DataParams, ModelParams, ParamsError, parse_params
from mlpipe.schema import Schema
from mlpipe.serving import export
from mlpipe.training import fit, losses, members
from mlpipe.util import files, runtime

PERIODIC = {"frequencies": 4, "width": 3}
TABULAR = {
    "numeric_encoding": "periodic",
    "categorical_encoding": "embedding",
    "ensemble_size": 3,
    "periodic": PERIODIC,
    "hidden_units": [8],
}


def mixed(n=60, seed=0, task="regression"):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    city = rng.choice(["a", "b", "c"], size=n).astype(object)
    city[:3] = None  # missing in training
    y = x * 1000 + 5000 if task == "regression" else np.where(x > 0, "yes", "no")
    return pd.DataFrame({"x": x, "size": rng.uniform(0, 100, n), "city": city, "y": y})


def schema_of(frame, task="regression"):
    schema = dataset.make_schema(frame, "y", task, DataParams(), ["x", "size", "city"])
    classes = ["no", "yes"] if task == "classification" else None
    return Schema(**{**schema.model_dump(), "classes": classes})


def build(frame, schema, seed=3, **model):
    runtime.seed_everything(seed)
    return models.build_model(ModelParams(**model), schema, frame)


def train_at(model, params, schema, splits, folder):
    """fit.train as the train stage calls it, at rate 0.01: (best model, run summary)."""
    return fit.train(
        model,
        params.train,
        dict(splits),
        schema,
        fit.RunDirs.inside(folder),
        seed=params.seed,
        learning_rate=0.01,
    )


def test_params_check_the_tabular_options():
    params = parse_params({"model": TABULAR, "train": {"monitor": "val_auc"}})
    assert params.model.periodic.sigma == 0.1
    assert params.train.monitor == "val_auc"
    with pytest.raises(ParamsError, match="numeric_encoding"):
        parse_params({"model": {"numeric_encoding": "piecewise_linear"}})
    with pytest.raises(ParamsError, match="apply to api sequential"):
        parse_params({"model": {"api": "functional", "ensemble_size": 2}})
    with pytest.raises(ParamsError, match="ensemble_size"):
        parse_params({"model": {"ensemble_size": 0}})


def test_defaults_build_the_plain_sequential_mlp():
    frame = mixed()
    _, core = models.split_model(build(frame, schema_of(frame), hidden_units=[8]))
    assert isinstance(core, keras.Sequential)
    assert [layer.name for layer in core.layers] == ["hidden_1", "output"]


def test_robust_scaling_uses_median_and_quartiles_and_clips_smoothly():
    train = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0, 4.0, 1000.0], "c": [5.0] * 6})
    stats = features.robust_stats(train, ["a", "c"])
    assert stats["median"] == [2.5, 5.0]
    assert stats["std"] == [np.quantile(train["a"], 0.75) - np.quantile(train["a"], 0.25), 1.0]
    x = keras.ops.convert_to_tensor(np.array([[2.5, 5.0], [1000.0, 5.0], [np.nan, 5.0]], "f4"))
    out = np.asarray(features.impute_standardize(x, **stats, clip=None, smooth_clip=3.0))
    scaled = (1000.0 - 2.5) / stats["std"][0]
    assert out[1, 0] == pytest.approx(scaled / np.sqrt(1 + (scaled / 3) ** 2), rel=1e-5)
    assert 2.9 < out[1, 0] < 3.0  # never beyond the bound
    assert out[0, 0] == 0.0 and out[2, 0] == 0.0  # the median, and missing imputed to it


def test_quantile_encoding_maps_training_quantiles_to_the_normals():
    rng = np.random.default_rng(0)
    skewed = rng.lognormal(0, 2, 5000)
    train = pd.DataFrame({"a": skewed, "zeros": np.where(np.arange(5000) < 2000, 0.0, skewed)})
    train["c"] = 5.0
    knots = features.quantile_knots(train, ["a", "zeros", "c"])
    x = np.column_stack([train["a"], train["zeros"], train["c"]]).astype("f4")
    out = np.asarray(features.quantile_normal(keras.ops.convert_to_tensor(x), knots))
    # A skewed column comes out about standard normal, in the order it went in.
    assert abs(out[:, 0].mean()) < 0.01 and out[:, 0].std() == pytest.approx(1.0, abs=0.03)
    assert (np.diff(out[np.argsort(x[:, 0]), 0]) >= 0).all()
    # The tie at 0 fills 40% of the rows: it maps to the normal's quantile at 20%, the middle.
    assert out[0, 1] == pytest.approx(-0.8416, abs=0.01)
    assert (out[:, 2] == 0.0).all()  # a constant column: one knot, at the median level
    # Beyond the training range: the end knots; missing: the median, so 0.
    extremes = np.array([[-1e9, 1e9, 5.0], [np.nan, np.nan, np.nan]], "f4")
    out = np.asarray(features.quantile_normal(keras.ops.convert_to_tensor(extremes), knots))
    assert out[0, :2] == pytest.approx([-3.0902, 3.0902], abs=1e-3)
    assert np.abs(out[1]).max() < 0.02


def test_embeddings_give_unseen_and_missing_their_own_slots():
    frame = mixed()
    frame.loc[:2, "city"] = "a"  # no missing value in training
    model = build(frame, schema_of(frame), **TABULAR)
    preprocessor, core = models.split_model(model)
    rows = pd.DataFrame({"x": [0.0] * 3, "size": [1.0] * 3, "city": ["a", "zzz", None]})
    index = np.asarray(
        preprocessor(features.tensors(features.model_inputs(rows, schema_of(frame))))
    )
    a = 1 + features.vocabulary(frame, "city").index("a")  # 0 is the unseen values' slot
    assert index[:, -1].tolist() == [a, 0.0, 4.0]  # a, unseen, missing (after the vocabulary)
    # 3 categories + unseen + missing: 5 slots of width round(1.6 * 5 ** 0.56) = 4
    assert core.get_layer("embedding_1").input_dim == 5
    assert core.get_layer("embedding_1").output_dim == 4
    assert [encodings.embedding_width(n) for n in (2, 5, 100, 10**6)] == [2, 4, 21, 50]
    summary = models.summary_text(model)
    assert "core/embedding_1" in summary and "core/periodic_linear" in summary


def test_periodic_embedding_has_per_feature_frequencies_and_linear_maps():
    frame = mixed()
    _, core = models.split_model(build(frame, schema_of(frame), **TABULAR))
    assert core.get_layer("periodic_frequencies").kernel.shape == (2, 4)
    assert core.get_layer("periodic_linear").kernel.shape == (2, 8, 3)
    assert core.get_layer("periodic").output.shape == (None, 6)
    # What the embeddings read: the robust-scaled features, or with periodic.scaling quantile
    # the quantile encoding's output.
    inputs = features.tensors(features.model_inputs(frame, schema_of(frame)))
    for scaling in ("robust", "quantile"):
        cfg = {**TABULAR, "periodic": {**PERIODIC, "scaling": scaling}}
        read = models.split_model(build(frame, schema_of(frame), **cfg))[0](inputs)
        alone = {**TABULAR, "numeric_encoding": scaling}
        expected = models.split_model(build(frame, schema_of(frame), **alone))[0](inputs)
        np.testing.assert_array_equal(np.asarray(read), np.asarray(expected))


def test_ensemble_predicts_the_members_mean():
    frame = mixed(task="classification")
    schema = schema_of(frame, "classification")
    model = build(frame, schema, **TABULAR)
    _, core = models.split_model(model)
    signs = core.get_layer("ensemble_adapter").kernel.numpy()
    assert set(np.unique(signs)) == {-1.0, 1.0}
    assert model.output_shape == (None, 1)
    # The mean of the members' probabilities: recompute it from the members' output layer.
    members = keras.Model(core.input, core.get_layer("ensemble_output").output)
    x = features.transform(models.split_model(model)[0], frame, schema).numpy()
    expected = members.predict(x, verbose=0).mean(axis=1)
    np.testing.assert_allclose(core.predict(x, verbose=0), expected, rtol=1e-6)
    # Built twice with the same seed: the same weights.
    again = build(frame, schema, **TABULAR)
    for a, b in zip(model.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_independent_members_are_separate_mlps_initialised_at_their_own_scale():
    frame = mixed(n=400)
    schema = schema_of(frame)
    cfg = {**TABULAR, "numeric_encoding": "standardize", "ensemble_weights": "independent"}
    cfg.update(hidden_units=[200, 100], kernel_initializer="glorot_uniform", ensemble_size=4)
    model = build(frame, schema, **cfg)
    _, core = models.split_model(model)
    assert not any(layer.name == "ensemble_adapter" for layer in core.layers)
    hidden = [core.get_layer(f"hidden_{i}") for i in (1, 2)]
    kernels = [layer.kernel.numpy() for layer in hidden]
    biases = [layer.bias.numpy() for layer in hidden]
    width = kernels[0].shape[1]
    assert kernels[0].shape == (4, width, 200) and kernels[1].shape == (4, 200, 100)
    # Glorot-uniform per member: limit sqrt(6 / (fan_in + fan_out)), not the members' total.
    for kernel in kernels:
        limit = np.sqrt(6 / (kernel.shape[1] + kernel.shape[2]))
        assert limit * 0.95 < np.abs(kernel).max() <= limit
        assert not np.allclose(kernel[0], kernel[1])
    # Member m's output is the MLP of its own weights alone.
    x = features.transform(models.split_model(model)[0], frame, schema).numpy()
    heads = core.get_layer("ensemble_output")
    w_out, b_out = heads.kernel.numpy(), heads.bias.numpy()
    got = keras.Model(core.input, heads.output).predict(x, verbose=0)
    z = core.get_layer("encoded").output
    encoded = keras.Model(core.input, z).predict(x, verbose=0)
    for m in range(4):
        h = encoded
        for kernel, bias in zip(kernels, biases, strict=True):
            h = np.maximum(h @ kernel[m] + bias[m], 0)
        np.testing.assert_allclose(got[:, m], h @ w_out[m] + b_out[m], rtol=1e-4, atol=1e-5)
    with pytest.raises(ParamsError, match="batch_norm"):
        parse_params({"model": {**cfg, "batch_norm": True}})


def test_standardized_target_maps_back_to_the_unit_of_the_target():
    frame = mixed()
    model = build(frame, schema_of(frame), hidden_units=[8], standardize_target=True)
    _, core = models.split_model(model)
    rescale = core.layers[-1]
    assert rescale.name == "target"
    assert rescale.scale == pytest.approx(frame["y"].std(ddof=0))
    assert rescale.offset == pytest.approx(frame["y"].mean())
    # A classification target is left as it is.
    frame = mixed(task="classification")
    _, core = models.split_model(
        build(frame, schema_of(frame, "classification"), hidden_units=[8], standardize_target=True)
    )
    assert core.layers[-1].name == "output"


def test_val_auc_is_monitored_upwards_for_two_classes_only():
    frame = mixed(task="classification")
    schema = schema_of(frame, "classification")
    assert "val_auc" in losses.monitor_choices(schema)
    assert losses.monitor_mode("val_auc") == "max"
    assert "val_auc" not in losses.monitor_choices(schema_of(mixed()))
    params = tiny_params(train={"monitor": "val_auc", "epochs": 2})
    with pytest.raises(Exception, match="val_auc"):
        losses.check_monitor(params.train, schema_of(mixed()))


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings",
    [
        {"numeric_encoding": "periodic"},
        {"numeric_encoding": "quantile"},
        {
            "periodic": {**PERIODIC, "scaling": "quantile"},
            "ensemble_weights": "independent",
        },
    ],
    ids=["periodic", "quantile", "periodic_of_quantiles_independent"],
)
def test_tabular_model_trains_on_auc_and_exports_for_plain_keras_and_onnx(tmp_path, settings):
    frame = mixed(n=120, task="classification")
    schema = schema_of(frame, "classification")
    splits = {"train": frame.iloc[:80], "valid": frame.iloc[80:100], "test": frame.iloc[100:]}
    params = tiny_params(
        model={**TABULAR, **settings},
        train={"monitor": "val_auc", "epochs": 3},
        export={"onnx": True},
    )
    runtime.seed_everything(params.seed)
    model = models.build_model(params.model, schema, splits["train"])
    best, summary = train_at(model, params, schema, splits, tmp_path / "run")
    assert summary["monitor"] == "val_auc"
    assert 0.5 <= summary["best_monitor_value"] <= 1.0
    out = tmp_path / "export"
    train_file = tmp_path / "train.parquet"
    splits["train"].to_parquet(train_file)
    with files.atomic_dir(out) as folder:
        export.export_model(best, schema, params, train_file, folder, splits["test"])
    inputs = features.model_inputs(splits["test"], schema)
    expected = features.predict(best, inputs, 32)
    script = (
        "import json, sys\nsys.modules['mlpipe'] = None\nimport keras, tensorflow as tf\n"
        "m = keras.saving.load_model(sys.argv[1], safe_mode=True)\n"
        "raw = json.load(sys.stdin)\n"
        "x = {k: tf.constant(v, 'string' if k == 'city' else 'float32') for k, v in raw.items()}\n"
        "print(json.dumps(m.predict(x, verbose=0).tolist()))\n"
    )
    got = predict_in_plain_keras(script, out / export.KERAS_FILE, inputs)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "loss, y_true, y_pred",
    [
        ("mse", [[1.0], [3.0]], [[[0.0], [2.0]], [[3.0], [5.0]]]),
        ("binary_crossentropy", [[1.0], [0.0]], [[[0.9], [0.6]], [[0.2], [0.7]]]),
        (
            "sparse_categorical_crossentropy",
            [2, 0],
            [[[0.1, 0.2, 0.7], [0.3, 0.3, 0.4]], [[0.5, 0.25, 0.25], [0.9, 0.05, 0.05]]],
        ),
    ],
)
def test_member_loss_is_the_mean_of_each_members_own_loss(loss, y_true, y_pred):
    y_true, y_pred = np.array(y_true), np.array(y_pred, "float32")
    got = keras.ops.convert_to_numpy(members.MemberLoss(loss).call(y_true, y_pred))
    fn = keras.losses.get(loss)
    each = [keras.ops.convert_to_numpy(fn(y_true, y_pred[:, m])) for m in range(2)]
    np.testing.assert_allclose(got, np.mean(each, axis=0), rtol=1e-6)
    if loss == "mse":  # (1 + 1) / 2 and (0 + 4) / 2, by hand
        np.testing.assert_allclose(got, [1.0, 2.0])


def test_member_metrics_score_the_members_mean():
    rmse = members.MemberMean(keras.metrics.RootMeanSquaredError(name="rmse"))
    rmse.update_state(np.array([[1.0], [3.0]]), np.array([[[0.0], [2.0]], [[3.0], [5.0]]]))
    assert rmse.name == "rmse"
    assert float(rmse.result()) == pytest.approx(np.sqrt((0.0**2 + 1.0**2) / 2))
    accuracy = members.metric_objects(schema_of(mixed(), "classification"), ["accuracy"])[0]
    # Member probabilities 0.9 and 0.2: each alone would say 1 and 0, their mean (0.55) says 1.
    accuracy.update_state(np.array([[1.0]]), np.array([[[0.9], [0.2]]]))
    assert float(accuracy.result()) == 1.0


@pytest.mark.slow
def test_ensemble_members_train_on_their_own_losses_and_early_stopping_watches_their_mean(
    tmp_path,
):
    frame = mixed(n=160)
    schema = schema_of(frame)
    splits = {"train": frame.iloc[:100], "valid": frame.iloc[100:130], "test": frame.iloc[130:]}
    cfg = {**TABULAR, "standardize_target": True}
    params = tiny_params(model=cfg, train={"monitor": "val_rmse", "epochs": 4})
    runtime.seed_everything(params.seed)
    model = models.build_model(params.model, schema, splits["train"])
    view = members.members_view(models.split_model(model)[1])
    assert view is not None and view.output_shape == (None, 3, 1)
    single = models.split_model(build(frame, schema, hidden_units=[4]))[1]
    assert members.members_view(single) is None
    best, summary = train_at(model, params, schema, splits, tmp_path / "run")
    # The checkpointed value is the RMSE of the saved model's (the members' mean) predictions,
    # in the target's unit: the view's metric is the ensemble's, rescaled.
    predicted = features.predict(best, features.model_inputs(splits["valid"], schema), 32)
    rmse = np.sqrt(np.mean((predicted.ravel() - splits["valid"]["y"].to_numpy()) ** 2))
    assert summary["best_monitor_value"] == pytest.approx(rmse, rel=1e-4)
    # The members differ: each kept its own output layer, trained on its own loss.
    heads = models.split_model(best)[1].get_layer("ensemble_output").kernel.numpy()
    assert not np.allclose(heads[0], heads[1])
