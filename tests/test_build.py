import re

import keras
import numpy as np
import pandas as pd
import pytest

from mlpipe import MlpipeError, dataset, features
from mlpipe.modeling import models
from mlpipe.params import DataParams, ModelParams
from mlpipe.schema import Schema
from mlpipe.util import runtime
from mlpipe.util.tables import DataError


def numeric_frame(n_rows=40, n_features=5, seed=0):
    x = np.random.default_rng(seed).normal(size=(n_rows, n_features))
    return pd.DataFrame(x, columns=[f"f{i}" for i in range(n_features)]).assign(y=x[:, 0])


def schema_for(frame, task="regression", classes=None):
    feature_cols = [c for c in frame.columns if c != "y"]
    schema = dataset.make_schema(frame, "y", "regression", DataParams(), feature_cols)
    return Schema(**{**schema.model_dump(), "task": task, "classes": classes})


def mixed_frame():
    """Numbers with gaps, a text column with gaps and a rare level, a boolean."""
    return pd.DataFrame(
        {
            "size": [1.0, 2.0, np.nan, 4.0, 5.0, 6.0, 7.0, np.nan],
            "city": ["a", "b", "a", None, "a", "b", "c", "a"],
            "new": [True, False, True, True, False, False, True, False],
            "y": np.arange(8.0),
        }
    )


@pytest.mark.parametrize(
    ("task", "classes", "units", "activation"),
    [
        ("classification", list(range(10)), 10, "softmax"),
        ("classification", ["no", "yes"], 1, "sigmoid"),
        ("regression", None, 1, "linear"),
    ],
)
def test_output_layer_follows_the_task(task, classes, units, activation):
    frame = numeric_frame()
    model = models.build_model(
        ModelParams(hidden_units=[8]), schema_for(frame, task, classes), frame
    )
    _, core = models.split_model(model)
    output = core.layers[-1]
    assert output.units == units
    assert output.activation.__name__ == activation
    assert model.output_shape == (None, units)


def test_preprocessing_is_learned_on_the_training_split_only(digits):
    splits, schema = digits
    params = ModelParams(hidden_units=[8], clip_inputs=None)
    preprocessor, _ = models.split_model(models.build_model(params, schema, splits["train"]))
    x_train = splits["train"][schema.feature_names].to_numpy(dtype=np.float64)
    out = features.to_numpy(features.transform(preprocessor, splits["train"], schema))
    # (x - training mean) / training std: mean 0 and std 1 on the training split, std 0 where
    # the column is constant in training (divided by 1, not by 0)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=0), np.where(x_train.std(axis=0) > 0, 1, 0), atol=1e-4)
    every = pd.concat(list(splits.values()), ignore_index=True)
    out_all = features.to_numpy(features.transform(preprocessor, every, schema))
    assert not np.allclose(out_all.mean(axis=0), 0.0, atol=1e-4)


def test_missing_numbers_get_the_training_median_and_unseen_categories_a_bucket():
    frame = mixed_frame()
    schema = dataset.make_schema(frame, "y", "regression", DataParams(), ["size", "city", "new"])
    assert [f.kind for f in schema.features] == ["numeric", "categorical", "numeric"]
    model = models.build_model(ModelParams(hidden_units=[4], clip_inputs=None), schema, frame)
    preprocessor, _ = models.split_model(model)
    rows = pd.DataFrame({"size": [np.nan, 4.5], "city": ["zzz", None], "new": [True, False]})
    out = features.predict(preprocessor, features.model_inputs(rows, schema), 8)
    stats = features.numeric_stats(frame, ["size", "new"])
    assert stats["median"] == [4.5, 0.5]
    # A missing size is the median: it standardizes exactly like the value 4.5.
    np.testing.assert_allclose(out[0, 0], out[1, 0], atol=1e-6)
    # city: vocabulary [a, b, "", c] (by frequency), one-hot with the out-of-vocabulary slot
    # first. "zzz" was never seen: only the OOV slot; a missing city was seen as "".
    assert features.vocabulary(frame, "city") == ["a", "b", "", "c"]
    np.testing.assert_array_equal(out[0, 2:], [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(out[1, 2:], [0, 0, 0, 1, 0])
    assert out.shape == (2, 2 + 5)


def test_target_encoding_rejects_unseen_labels():
    schema = Schema(features=(), target="y", task="classification", classes=("a", "b"))
    assert features.encode_target(pd.Series(["b", "a"]), schema).tolist() == [1, 0]
    with pytest.raises(DataError, match="'c'"):
        features.encode_target(pd.Series(["a", "c"]), schema)


def test_hidden_layers_dropout_batch_norm_and_l2():
    frame = numeric_frame()
    cfg = ModelParams(
        hidden_units=[16, 8, 4],
        activation="elu",
        kernel_initializer="glorot_uniform",
        dropout=0.25,
        batch_norm=True,
        l2=0.01,
    )
    _, core = models.split_model(models.build_model(cfg, schema_for(frame), frame))
    dense = [layer for layer in core.layers if layer.name.startswith("hidden_")]
    assert [layer.units for layer in dense] == [16, 8, 4]
    assert {layer.activation.__name__ for layer in dense} == {"elu"}
    assert {type(layer.kernel_initializer).__name__ for layer in dense} == {"GlorotUniform"}
    assert all(layer.kernel_regularizer.l2 == pytest.approx(0.01) for layer in dense)
    kinds = [type(layer).__name__ for layer in core.layers]
    assert kinds.count("BatchNormalization") == 3 and kinds.count("Dropout") == 3


def test_standardized_inputs_are_clipped():
    frame = pd.DataFrame({"f0": np.zeros(40), "f1": np.r_[np.full(20, 2.0), np.zeros(20)]})
    frame["y"] = 0.0  # f0 is constant in training, f1 has mean 1 and std 1
    model = models.build_model(
        ModelParams(hidden_units=[4], clip_inputs=3.0), schema_for(frame), frame
    )
    preprocessor, _ = models.split_model(model)
    probe = pd.DataFrame({"f0": [0.0, 16.0, -16.0], "f1": [1.5, -40.0, 40.0]})
    out = features.predict(preprocessor, features.model_inputs(probe, schema_for(frame)), 8)
    np.testing.assert_allclose(out, [[0.0, 0.5], [3.0, -3.0], [-3.0, 3.0]], atol=1e-5)


def test_same_seed_builds_the_same_weights():
    frame = numeric_frame()
    weights = []
    for _ in range(2):
        runtime.seed_everything(11)
        model = models.build_model(ModelParams(hidden_units=[8]), schema_for(frame), frame)
        weights.append(model.get_layer("core").get_layer("hidden_1").kernel.numpy())
    np.testing.assert_array_equal(weights[0], weights[1])


def test_summary_lists_inputs_layers_shapes_and_counts(digits):
    splits, schema = digits
    model = models.build_model(ModelParams(hidden_units=[300, 100]), schema, splits["train"])
    text = models.summary_text(model)
    assert "Inputs: 64 named columns (64 numeric, 0 categorical)" in text
    assert re.search(r"^core/hidden_1 +Dense +\(None, 300\) +19,500$", text, re.M)
    assert f"Total params: {model.count_params():,}" in text
    assert model.count_params() == 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10


def test_save_and_load_round_trip(tmp_path):
    frame = mixed_frame()
    schema = dataset.make_schema(frame, "y", "regression", DataParams(), ["size", "city", "new"])
    model = models.build_model(ModelParams(hidden_units=[8]), schema, frame)
    path = tmp_path / "m.keras"
    models.save_model(model, path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.keras"]
    again = models.load_model(path)
    inputs = features.model_inputs(frame, schema)
    np.testing.assert_allclose(
        features.predict(again, inputs, 4), features.predict(model, inputs, 4), rtol=1e-6
    )


def test_loading_a_foreign_file_says_what_to_do(tmp_path):
    path = tmp_path / "m.keras"
    path.write_text("not a model")
    with pytest.raises(MlpipeError, match="dvc repro"):
        models.load_model(path)
    with pytest.raises(MlpipeError, match="not found"):
        models.load_model(tmp_path / "absent.keras")
    h5 = tmp_path / "m.h5"
    h5.write_text("x")
    with pytest.raises(MlpipeError, match=r"only `\.keras`"):
        models.load_model(h5)
    assert keras.__version__.startswith("3.")


def test_a_model_that_would_run_code_is_refused(tmp_path):
    inputs = keras.Input(shape=(2,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs))
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(MlpipeError, match="refused"):
        models.load_model(path)


def test_a_model_from_elsewhere_is_named_as_such():
    inputs = keras.Input(shape=(2,))
    with pytest.raises(MlpipeError, match="not built by this project"):
        models.split_model(keras.Model(inputs, keras.layers.Dense(1)(inputs)))


def test_text_cells_and_typed_columns_give_the_inputs_model_inputs_gives():
    """`input_matrices` (what predict and serve feed) holds exactly the values of
    `model_inputs` (what training feeds), whether cells are text, as in a CSV file, or typed."""
    rng = np.random.default_rng(0)
    numbers = [repr(float(v)) for v in rng.normal(0, 1e3, 200)] + ["1e5", "-0", "+3", ".5"]
    typed = pd.DataFrame(
        {
            "size": pd.to_numeric(pd.Series(numbers)),
            "city": rng.choice(["a", "b", None], len(numbers)),
            "count": rng.integers(0, 2**40, len(numbers)),
            "y": 0.0,
        }
    )
    typed.loc[3, "size"] = np.nan
    text = typed.astype("str").replace({"nan": None, "None": None})
    text.loc[5, "count"] = "true"  # true/false words in a numeric column read as 1/0
    schema = dataset.make_schema(typed, "y", "regression", DataParams(), ["size", "city", "count"])
    for frame in (typed, text):
        inputs = features.model_inputs(frame, schema)
        numeric, categorical = features.input_matrices(frame, schema)
        np.testing.assert_array_equal(numeric[:, 0], inputs["size"][:, 0])
        np.testing.assert_array_equal(numeric[:, 1], inputs["count"][:, 0])
        assert categorical[:, 0].tolist() == inputs["city"][:, 0].tolist()
    assert features.input_matrices(text, schema)[0][5, 1] == 1.0
    text.loc[7, "size"] = "seven"
    with pytest.raises(DataError, match="column `size` is numeric but row 8 holds 'seven'"):
        features.input_matrices(text, schema)
