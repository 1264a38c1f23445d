"""Class and sample weights: what `train.class_weight` and `data.weight_column` do to training."""

import importlib.util

import numpy as np
import pandas as pd
import pytest
from sklearn.utils.class_weight import compute_class_weight

from conftest import ROOT, run_stage, tiny_params
from mlpipe import MlpipeError, dataset
from mlpipe.features import sample_weights
from mlpipe.modeling import models
from mlpipe.params import DataParams
from mlpipe.schema import Feature, Schema, read_schema
from mlpipe.training import losses

CLASSES = Schema(features=(), task="classification", classes=("cat", "dog", "emu"), target="animal")


def weights_for(setting, y, schema=CLASSES):
    return losses.class_weights(tiny_params(train={"class_weight": setting}).train, schema, y)


def test_balanced_matches_scikit_learn():
    y = np.array([0] * 6 + [1] * 3 + [2])
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y)
    assert weights_for("balanced", y) == pytest.approx(dict(enumerate(expected)))
    assert weights_for("balanced", y)[2] == pytest.approx(10 / 3)


def test_mapping_names_classes_by_label_and_defaults_to_one():
    assert weights_for({"emu": 5, "cat": 0.5}, np.array([0, 1, 2])) == {0: 0.5, 1: 1.0, 2: 5.0}
    digits = Schema(features=(), task="classification", classes=(0, 1), target="y")
    assert weights_for({1: 3, "0": 2}, np.array([0, 1]), digits) == {0: 2.0, 1: 3.0}
    assert weights_for(None, np.array([0, 1])) is None


def test_unknown_label_and_regression_are_refused():
    with pytest.raises(MlpipeError, match=r"\['cow'\] are not classes of `animal`"):
        weights_for({"cow": 2}, np.array([0, 1, 2]))
    with pytest.raises(MlpipeError, match="classification"):
        weights_for("balanced", np.array([0.5]), Schema(features=(), task="regression", target="y"))


def test_class_weight_with_sample_weights_or_several_outputs_is_refused_before_training():
    train = tiny_params(train={"class_weight": "balanced"}).train
    frame = pd.DataFrame(np.zeros((4, 3)), columns=list("abc"))
    features = tuple(Feature(name=n, input=n, kind="numeric") for n in "abc")
    schema = CLASSES.model_copy(update={"features": features, "weight_column": "w"})
    model = models.build_model(tiny_params().model, schema, frame)
    with pytest.raises(MlpipeError, match="Multiply each row's weight by its class's weight"):
        losses.check_weighting(train, schema, model)
    import keras

    inputs = keras.Input((3,))
    two_outputs = keras.Model(
        inputs, [keras.layers.Dense(1)(inputs), keras.layers.Dense(1)(inputs)]
    )
    with pytest.raises(MlpipeError, match="several outputs"):
        losses.check_weighting(
            train, schema.model_copy(update={"weight_column": None}), two_outputs
        )
    losses.check_weighting(tiny_params().train, schema, two_outputs)


def test_weight_column_is_checked_and_never_a_feature():
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "w": [1.0, 0.5, 2.0], "y": [0, 1, 0]})
    params = DataParams(weight_column="w")
    dataset.check_weight_column(frame, params, "y")
    features = dataset.feature_columns(frame, params, "y")
    schema = dataset.make_schema(frame, "y", "classification", params, features)
    assert schema.feature_names == ["x"]
    np.testing.assert_array_equal(sample_weights(frame, schema), [1.0, 0.5, 2.0])
    with pytest.raises(dataset.DataError, match=r"row 2 holds -1\.0"):
        dataset.check_weight_column(frame.assign(w=[1.0, -1.0, 1.0]), params, "y")
    with pytest.raises(dataset.DataError, match="must be numeric"):
        dataset.check_weight_column(frame.assign(w=["a", "b", "c"]), params, "y")
    with pytest.raises(dataset.DataError, match="`weight`"):
        dataset.check_weight_column(frame, DataParams(weight_column="weight"), "y")


@pytest.mark.slow
def test_prepare_stage_leaves_the_weight_column_out_of_the_features(tmp_path):
    (tmp_path / "params.yaml").write_text("data:\n  weight_column: pixel_0_1\n")
    assert run_stage("prepare", "out", cwd=tmp_path).returncode == 0
    schema = read_schema(tmp_path / "out")
    assert schema.weight_column == "pixel_0_1"
    assert "pixel_0_1" not in schema.feature_names and len(schema.features) == 63


@pytest.mark.slow
def test_balanced_class_weight_raises_minority_recall():
    spec = importlib.util.spec_from_file_location("imbalanced", ROOT / "examples/imbalanced.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    frame = demo.imbalanced_frame()
    plain = demo.train_and_score(frame, None)
    balanced = demo.train_and_score(frame, "balanced")
    assert balanced["minority_recall"] >= plain["minority_recall"] + 0.15
    assert balanced["balanced_accuracy"] > plain["balanced_accuracy"]
    assert balanced["majority_recall"] < plain["majority_recall"]
