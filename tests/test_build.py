import re

import keras
import numpy as np
import pytest

from mlpipe import MlpipeError, data, models, runtime
from mlpipe.config import ModelParams


def schema_for(task, classes=None, n_features=5):
    features = [{"name": f"f{i}", "dtype": "float64"} for i in range(n_features)]
    return {"features": features, "target": "y", "task": task, "classes": classes}


@pytest.mark.parametrize(
    ("task", "classes", "units", "activation"),
    [
        ("classification", list(range(10)), 10, "softmax"),
        ("classification", ["no", "yes"], 1, "sigmoid"),
        ("regression", None, 1, "linear"),
    ],
)
def test_output_layer_follows_the_task(task, classes, units, activation):
    x = np.random.default_rng(0).normal(size=(40, 5)).astype("float32")
    model = models.build_model(ModelParams(hidden_units=[8]), schema_for(task, classes), x)
    output = model.layers[-1]
    assert output.units == units
    assert output.activation.__name__ == activation
    assert model.output_shape == (None, units)


def test_normalization_is_adapted_on_the_training_split_only(digits):
    splits, schema = digits
    x_train, _ = data.features_and_target(splits["train"], schema)
    model = models.build_model(ModelParams(hidden_units=[8]), schema, x_train)
    normalization = model.get_layer("normalization")
    np.testing.assert_allclose(np.ravel(normalization.mean), x_train.mean(axis=0), rtol=1e-4)
    np.testing.assert_allclose(
        np.ravel(normalization.variance), x_train.var(axis=0), rtol=1e-3, atol=1e-5
    )
    x_all = np.vstack([data.features_and_target(p, schema)[0] for p in splits.values()])
    assert not np.allclose(np.ravel(normalization.mean), x_all.mean(axis=0), rtol=1e-4)


def test_hidden_layers_dropout_batch_norm_and_l2():
    x = np.random.default_rng(0).normal(size=(40, 5)).astype("float32")
    cfg = ModelParams(
        hidden_units=[16, 8, 4],
        activation="elu",
        kernel_initializer="glorot_uniform",
        dropout=0.25,
        batch_norm=True,
        l2=0.01,
    )
    model = models.build_model(cfg, schema_for("regression"), x)
    dense = [layer for layer in model.layers if layer.name.startswith("hidden_")]
    assert [layer.units for layer in dense] == [16, 8, 4]
    assert {layer.activation.__name__ for layer in dense} == {"elu"}
    assert {type(layer.kernel_initializer).__name__ for layer in dense} == {"GlorotUniform"}
    assert all(layer.kernel_regularizer.l2 == pytest.approx(0.01) for layer in dense)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("BatchNormalization") == 3 and kinds.count("Dropout") == 3
    plain = models.build_model(
        ModelParams(hidden_units=[16], clip_inputs=None), schema_for("regression"), x
    )
    assert {type(layer).__name__ for layer in plain.layers} == {"Normalization", "Dense"}


def test_standardized_inputs_are_clipped():
    x = np.zeros((40, 2), dtype="float32")
    x[:20, 1] = 2.0  # feature 0 is constant in training, feature 1 has mean 1 and std 1
    model = models.build_model(
        ModelParams(hidden_units=[4], clip_inputs=3.0), schema_for("regression", n_features=2), x
    )
    clipped = keras.Model(model.inputs, model.get_layer("clip_scale_up").output)
    probe = np.array([[0.0, 1.5], [16.0, -40.0], [-16.0, 40.0]], dtype="float32")
    np.testing.assert_allclose(
        clipped.predict(probe, verbose=0), [[0.0, 0.5], [3.0, -3.0], [-3.0, 3.0]], atol=1e-5
    )


def test_same_seed_builds_the_same_weights():
    x = np.random.default_rng(0).normal(size=(40, 5)).astype("float32")
    weights = []
    for _ in range(2):
        runtime.seed_everything(11)
        model = models.build_model(ModelParams(hidden_units=[8]), schema_for("regression"), x)
        weights.append(model.get_layer("hidden_1").kernel.numpy())
    np.testing.assert_array_equal(weights[0], weights[1])


def test_summary_lists_layers_shapes_and_counts(digits):
    splits, schema = digits
    x_train, _ = data.features_and_target(splits["train"], schema)
    model = models.build_model(ModelParams(hidden_units=[300, 100]), schema, x_train)
    text = models.summary_text(model)
    assert re.search(r"^hidden_1 +Dense +\(None, 300\) +19,500$", text, re.M)
    assert f"Total params: {model.count_params():,}" in text
    assert model.count_params() == 129 + 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10


def test_save_and_load_round_trip(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 5)).astype("float32")
    model = models.build_model(ModelParams(hidden_units=[8]), schema_for("regression"), x)
    path = tmp_path / "m.keras"
    models.save_model(model, path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.keras"]
    again = models.load_model(path)
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0))


def test_loading_a_foreign_file_says_what_to_do(tmp_path):
    path = tmp_path / "m.keras"
    path.write_text("not a model")
    with pytest.raises(MlpipeError, match="dvc repro"):
        models.load_model(path)
    with pytest.raises(MlpipeError, match="not found"):
        models.load_model(tmp_path / "absent.keras")
    assert keras.__version__.startswith("3.")
