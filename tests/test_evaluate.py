import json
import math

import numpy as np
import pandas as pd
import pytest

from conftest import run_stage, tiny_params
from mlpipe import data, metrics, models


def test_classification_metrics_on_known_values():
    y_true = np.array([0, 1, 2, 2])
    proba = np.array(
        [[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.1, 0.2, 0.7], [0.6, 0.2, 0.2]], dtype=np.float32
    )
    scores = metrics.classification_metrics(y_true, proba)
    assert scores["accuracy"] == 0.75
    # class 0: p=1/2 r=1, class 1: p=1 r=1, class 2: p=1 r=1/2
    assert scores["f1_macro"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3, abs=1e-6)
    assert scores["balanced_accuracy"] == pytest.approx((1 + 1 + 0.5) / 3, abs=1e-6)
    expected_log_loss = -np.mean(np.log([0.8, 0.7, 0.7, 0.2]))
    assert scores["log_loss"] == pytest.approx(expected_log_loss, abs=1e-5)
    assert 0.5 < scores["roc_auc"] <= 1


def test_perfect_predictions_score_one():
    y_true = np.array([0, 1, 2, 1])
    scores = metrics.classification_metrics(y_true, np.eye(3)[y_true] * 0.98 + 0.02 / 3)
    assert scores["accuracy"] == scores["f1_macro"] == scores["roc_auc"] == 1.0


def test_sigmoid_output_becomes_two_class_probabilities():
    raw = np.array([[0.9], [0.2], [0.6]])
    schema = {"task": "classification", "classes": ["neg", "pos"]}
    scores = metrics.score(schema, np.array([1, 0, 0]), raw)
    assert scores["accuracy"] == pytest.approx(2 / 3, abs=1e-6)
    assert scores["roc_auc"] == 1.0
    rows = metrics.prediction_rows(schema, np.array([1, 0, 0]), raw)
    assert rows.to_dict("records") == [
        {"actual": "pos", "predicted": "pos"},
        {"actual": "neg", "predicted": "neg"},
        {"actual": "neg", "predicted": "pos"},
    ]


def test_regression_metrics_on_known_values():
    scores = metrics.score({"task": "regression"}, np.array([1.0, 2.0, 3.0]), [[1.0], [2.0], [5.0]])
    assert scores["rmse"] == pytest.approx(math.sqrt(4 / 3), abs=1e-6)
    assert scores["mae"] == pytest.approx(2 / 3, abs=1e-6)
    assert scores["r2"] == pytest.approx(1 - 4 / 2, abs=1e-6)


def test_stage_writes_metrics_and_prediction_rows(prepared_dir, tmp_path):
    params = tiny_params(evaluate={"batch_size": 50})
    (tmp_path / "params.yaml").write_text(json.dumps(params.model_dump(mode="json")))
    schema = data.read_schema(prepared_dir)
    train = data.read_splits(prepared_dir)["train"]
    models.save_model(models.build_model(params.model, schema, train), tmp_path / "m.keras")
    args = [str(prepared_dir), "m.keras", "evaluate.json", "predictions.csv"]
    result = run_stage("evaluate", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    scores = json.loads((tmp_path / "evaluate.json").read_text())
    assert {"accuracy", "f1_macro", "roc_auc", "log_loss"} <= set(scores)
    assert 0 <= scores["accuracy"] <= 1
    rows = pd.read_csv(tmp_path / "predictions.csv")
    assert list(rows.columns) == ["actual", "predicted"] and len(rows) == 360
    assert (rows["actual"] == rows["predicted"]).mean() == pytest.approx(
        scores["accuracy"], abs=1e-6
    )


def test_regression_prediction_rows_keep_values():
    rows = metrics.prediction_rows({"task": "regression"}, np.array([1.5, 2.0]), [[1.25], [2.5]])
    assert rows.to_dict("records") == [
        {"actual": 1.5, "predicted": 1.25},
        {"actual": 2.0, "predicted": 2.5},
    ]
