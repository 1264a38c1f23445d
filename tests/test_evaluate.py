import io
import json
import math

import numpy as np
import pandas as pd
import pytest

from conftest import run_stage, tiny_params
from mlpipe.evaluation import metrics
from mlpipe.modeling import models
from mlpipe.schema import Schema, read_schema, read_splits


def test_classification_metrics_on_known_values():
    y_true = np.array([0, 1, 2, 2])
    proba = np.array(
        [[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.1, 0.2, 0.7], [0.6, 0.2, 0.2]], dtype=np.float32
    )
    scores = metrics.classification_metrics(y_true, proba, ["a", "b", "c"])
    assert scores["accuracy"] == 0.75
    # class a: p=1/2 r=1, class b: p=1 r=1, class c: p=1 r=1/2; supports 1, 1, 2
    assert scores["f1_macro"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3, abs=1e-6)
    assert scores["f1_weighted"] == pytest.approx((2 / 3 + 1 + 2 * 2 / 3) / 4, abs=1e-6)
    assert scores["precision_weighted"] == pytest.approx((0.5 + 1 + 2) / 4, abs=1e-6)
    assert scores["recall_macro"] == scores["balanced_accuracy"]
    assert scores["balanced_accuracy"] == pytest.approx((1 + 1 + 0.5) / 3, abs=1e-6)
    expected_log_loss = -np.mean(np.log([0.8, 0.7, 0.7, 0.2]))
    assert scores["log_loss"] == pytest.approx(expected_log_loss, abs=1e-5)
    assert 0.5 < scores["roc_auc"] <= 1 and 0.5 < scores["pr_auc"] <= 1
    assert scores["per_class"] == {
        "a": {"precision": 0.5, "recall": 1.0, "f1": 0.666667, "support": 1},
        "b": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
        "c": {"precision": 1.0, "recall": 0.5, "f1": 0.666667, "support": 2},
    }
    assert set(scores) == {*metrics.CLASSIFICATION_METRICS, "per_class"}


def test_perfect_predictions_score_one():
    y_true = np.array([0, 1, 2, 1])
    scores = metrics.classification_metrics(y_true, np.eye(3)[y_true] * 0.98 + 0.02 / 3)
    assert scores["accuracy"] == scores["f1_macro"] == scores["roc_auc"] == scores["pr_auc"] == 1
    assert "per_class" not in scores


def test_ranking_scores_leave_out_a_class_missing_from_the_split():
    # Class 2 never occurs: scikit-learn's roc_auc_score would raise; the others still score.
    y_true = np.array([0, 0, 1, 1])
    proba = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]])
    scores = metrics.classification_metrics(y_true, proba)
    assert scores["roc_auc"] == 1.0 and scores["pr_auc"] == 1.0


def test_sigmoid_output_becomes_two_class_probabilities():
    raw = np.array([[0.9], [0.2], [0.6]])
    schema = Schema(features=(), target="y", task="classification", classes=("neg", "pos"))
    scores = metrics.score(schema, np.array([1, 0, 0]), raw)
    assert scores["accuracy"] == pytest.approx(2 / 3, abs=1e-6)
    assert scores["roc_auc"] == 1.0
    assert scores["pr_auc"] == 1.0  # of the positive class: the one positive ranks first
    assert scores["per_class"]["pos"] == {
        "precision": 0.5,
        "recall": 1.0,
        "f1": 0.666667,
        "support": 1,
    }


def test_regression_metrics_on_known_values():
    schema = Schema(features=(), target="y", task="regression")
    scores = metrics.score(schema, np.array([1.0, 2.0, 4.0]), [[1.0], [2.5], [2.0]])
    assert scores["rmse"] == pytest.approx(math.sqrt((0.25 + 4) / 3), abs=1e-6)
    assert scores["mae"] == pytest.approx(2.5 / 3, abs=1e-6)
    assert scores["r2"] == pytest.approx(1 - 4.25 / (14 / 3), abs=1e-6)
    assert scores["mape"] == pytest.approx((0 + 0.25 + 0.5) / 3, abs=1e-6)
    assert scores["median_absolute_error"] == 0.5
    assert set(scores) == set(metrics.REGRESSION_METRICS)


def test_undefined_metric_is_null_not_nan():
    scores = metrics.regression_metrics(np.array([1.0]), np.array([2.0]))
    assert scores["r2"] is None
    json.dumps(scores, allow_nan=False)


def test_by_split_puts_test_at_the_top():
    layout = metrics.by_split({"valid": {"accuracy": 0.8}, "test": {"accuracy": 0.9}})
    assert layout == {"accuracy": 0.9, "valid": {"accuracy": 0.8}}


def test_threshold_names_are_checked_against_the_task():
    metrics.check_threshold_names({"accuracy": 0.9, "log_loss": 0.2}, "classification")
    with pytest.raises(metrics.QualityGateError) as info:
        metrics.check_threshold_names({"acuracy": 0.9}, "classification")
    message = str(info.value)
    assert "`acuracy` (did you mean `accuracy`?)" in message
    assert "valid names are accuracy, balanced_accuracy" in message
    with pytest.raises(metrics.QualityGateError, match="`accuracy` is not a regression metric"):
        metrics.check_threshold_names({"accuracy": 0.9}, "regression")


def test_thresholds_are_floors_or_ceilings_for_errors():
    scores = {"accuracy": 0.95, "rmse": 0.6, "r2": 0.5, "log_loss": 0.1, "roc_auc": None}
    assert metrics.missed_thresholds(scores, {"accuracy": 0.95, "rmse": 0.6, "r2": 0.4}) == []
    missed = metrics.missed_thresholds(
        scores, {"accuracy": 0.97, "rmse": 0.55, "log_loss": 0.2, "roc_auc": 0.9}
    )
    assert missed == [
        "accuracy = 0.95 is below its floor 0.97",
        "rmse = 0.6 is above its ceiling 0.55",
        "roc_auc is undefined on this split (threshold 0.9)",
    ]


@pytest.fixture
def stage_dir(prepared_dir, tmp_path):
    """A folder with params.yaml, an untrained model and DVCLive curves, to run the stage in."""
    schema = read_schema(prepared_dir)
    train = read_splits(prepared_dir)["train"]
    params = tiny_params()
    models.save_model_folder(models.build_model(params.model, schema, train), tmp_path / "m")
    for split, names in {"train": ("loss", "accuracy"), "eval": ("loss", "accuracy")}.items():
        folder = tmp_path / "live" / "plots" / "metrics" / split
        folder.mkdir(parents=True)
        for name in names:
            (folder / f"{name}.tsv").write_text(f"step\t{name}\n0\t0.5\n1\t0.25\n")
    return tmp_path


def write_params(folder, **evaluate):
    params = tiny_params(evaluate={"batch_size": 50, **evaluate})
    (folder / "params.yaml").write_text(json.dumps(params.model_dump(mode="json")))


@pytest.mark.slow
def test_stage_writes_metrics_and_plots_then_gate_fails(prepared_dir, stage_dir):
    # An untrained model cannot reach 0.99 accuracy: the gate fails, after writing everything.
    write_params(stage_dir, thresholds={"accuracy": 0.99, "log_loss": 100.0})
    args = [str(prepared_dir), "m", "evaluate.json", "details.json", "plots", "--training", "live"]
    result = run_stage("evaluate", *args, cwd=stage_dir)
    assert result.returncode == 2, result.stderr
    scores = json.loads((stage_dir / "details.json").read_text())
    # the metrics file DVC shows holds only the headline metrics of the test split
    headline = json.loads((stage_dir / "evaluate.json").read_text())
    assert headline == {name: scores[name] for name in metrics.HEADLINE_METRICS["classification"]}
    assert f"accuracy = {scores['accuracy']} is below its floor 0.99" in result.stderr
    assert "log_loss" not in result.stderr.split("quality gate failed")[1]
    assert "written to evaluate.json" in result.stderr

    assert set(metrics.CLASSIFICATION_METRICS) <= set(scores)
    assert set(metrics.CLASSIFICATION_METRICS) <= set(scores["valid"])
    assert sum(row["support"] for row in scores["per_class"].values()) == 360
    assert "baseline" not in scores  # the baselines stage's

    rows = pd.read_csv(stage_dir / "plots" / "confusion.csv")
    assert len(rows) == 360
    assert (rows["actual"] == rows["predicted"]).mean() == pytest.approx(
        scores["accuracy"], abs=1e-6
    )
    written = {p.name for p in (stage_dir / "plots").iterdir()}
    assert written == {
        "confusion.csv",
        "roc.csv",
        "precision_recall.csv",
        "calibration.csv",
        "residuals.csv",
        "confusion.png",
        "roc.png",
        "precision_recall.png",
        "calibration.png",
        "training.png",
    }


@pytest.mark.slow
def test_stage_rejects_an_unknown_threshold_before_scoring(prepared_dir, stage_dir):
    write_params(stage_dir, thresholds={"rmse": 0.5})
    args = [str(prepared_dir), "missing", "evaluate.json", "details.json", "plots"]
    result = run_stage("evaluate", *args, cwd=stage_dir)
    assert result.returncode == 2
    assert "evaluate.thresholds: `rmse` is not a classification metric" in result.stderr
    assert not (stage_dir / "evaluate.json").exists()


def test_evaluate_scores_the_predictions_of_raw_rows(digits):
    from mlpipe import features
    from mlpipe.evaluation.evaluate import evaluate

    splits, schema = digits
    params = tiny_params(evaluate={"baselines": False})
    model = models.build_model(params.model, schema, splits["train"])
    scores, files = evaluate(model, schema, splits, params.evaluate.batch_size)
    for split, got in (("test", scores), ("valid", scores["valid"])):
        inputs, y = features.inputs_and_target(splits[split], schema)
        predicted = features.predict(model, inputs, 64).argmax(axis=1)
        assert got["accuracy"] == pytest.approx(np.mean(predicted == y), abs=1e-6)
    assert "baseline" not in scores and "outputs" not in scores
    confusion = pd.read_csv(io.BytesIO(files["confusion.csv"]))
    assert len(confusion) == len(splits["test"]) and "training.png" not in files
