import json

import numpy as np
import pandas as pd
import pytest

from conftest import run_stage, tiny_params
from mlpipe.evaluation import baselines, metrics


def mixed_frame(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Numeric, string, category and boolean columns with missing values; the target follows
    `size` and `colour`, so a linear model can learn it and a constant cannot."""
    rng = np.random.default_rng(seed)
    size = rng.normal(size=n)
    colour = rng.choice(["red", "green", "blue"], size=n)
    frame = pd.DataFrame(
        {
            "size": size,
            "count": pd.array(rng.integers(0, 5, size=n), dtype="Int64"),
            "colour": pd.array(colour, dtype="string"),
            "shape": pd.Categorical(rng.choice(["round", "square"], size=n)),
            "flag": rng.random(n) < 0.5,
            "note": rng.choice(np.array(["a", "b", None], dtype=object), size=n),
        }
    )
    frame.loc[::9, "size"] = np.nan
    frame.loc[::7, "count"] = pd.NA
    frame.loc[::11, "colour"] = pd.NA
    score = np.nan_to_num(size) + (colour == "red") * 2.0
    return frame, score


def test_preprocessor_splits_numeric_from_other_columns():
    frame, _ = mixed_frame(40, 0)
    columns = {name: cols for name, _, cols in baselines.preprocessor(frame).transformers}
    assert columns == {
        "numeric": ["size", "count"],
        "categorical": ["colour", "shape", "flag", "note"],
    }


def test_classification_baselines_on_mixed_columns():
    frame, score = mixed_frame(300, 1)
    y = (score > 1).astype(int) + (score > 2.5).astype(int)  # three classes
    train, test = frame.iloc[:200], frame.iloc[200:].copy()
    test.loc[test.index[:5], "colour"] = "purple"  # a category never seen in training
    results = baselines.score_baselines(
        train,
        y[:200],
        {"test": test, "valid": test},
        {"test": y[200:], "valid": y[200:]},
        "classification",
        n_classes=3,
    )
    assert set(results) == {"majority", "logistic_regression", "gradient_boosting"}
    majority, logistic = results["majority"]["test"], results["logistic_regression"]["test"]
    trees = results["gradient_boosting"]["test"]
    assert trees["accuracy"] > majority["accuracy"] + 0.2 and trees["log_loss"] < 1
    assert set(majority) == set(metrics.CLASSIFICATION_METRICS)
    assert majority["accuracy"] == pytest.approx(np.mean(y[200:] == np.bincount(y[:200]).argmax()))
    assert majority["roc_auc"] == 0.5
    assert logistic["accuracy"] > majority["accuracy"] + 0.2
    assert logistic["log_loss"] < majority["log_loss"]
    assert results["logistic_regression"]["valid"] == logistic


def test_class_missing_from_training_gets_zero_probability():
    frame, score = mixed_frame(120, 2)
    y = (score > 1).astype(int)
    y[-10:] = 2  # class 2 only in the evaluated rows
    results = baselines.score_baselines(
        frame.iloc[:100],
        y[:100],
        {"test": frame.iloc[100:]},
        {"test": y[100:]},
        "classification",
        n_classes=3,
    )
    assert results["logistic_regression"]["test"]["recall_macro"] < 1


def test_regression_baselines_on_mixed_columns():
    frame, score = mixed_frame(300, 3)
    train, test = frame.iloc[:200], frame.iloc[200:]
    results = baselines.score_baselines(
        train, score[:200], {"test": test}, {"test": score[200:]}, "regression"
    )
    mean, linear = results["mean"]["test"], results["linear_regression"]["test"]
    assert set(mean) == set(metrics.REGRESSION_METRICS)
    assert mean["r2"] == pytest.approx(0, abs=0.05)
    # below 1: the colour of the rows where it is missing is mode-imputed, and that loses it
    assert linear["r2"] > 0.8 and linear["rmse"] < mean["rmse"]
    assert results["gradient_boosting"]["test"]["rmse"] < mean["rmse"] * 0.7


def test_boosted_trees_take_categories_natively():
    frame, _ = mixed_frame(60, 4)
    pipeline = baselines.baseline_pipelines(frame, "regression")["gradient_boosting"]
    # categories first, as integer codes, so the trees' categorical flags point at them
    assert list(pipeline["model"].categorical_features) == [True] * 4 + [False] * 2
    codes = pipeline["prepare"].fit_transform(frame)
    assert np.isnan(codes[frame["colour"].isna().to_numpy(), 0]).all()  # missing stays missing
    assert np.nanmax(codes[:, 0]) == 2  # red, green, blue
    one_hot = baselines.preprocessor(frame).fit(frame).named_transformers_["categorical"]
    assert list(one_hot[-1].categories_[0]) == ["blue", "green", "red"]  # no "nan" category


@pytest.mark.slow
def test_stage_scores_the_baselines_on_the_prepared_splits(prepared_dir, tmp_path):
    for enabled in (True, False):
        params = tiny_params(evaluate={"baselines": enabled})
        (tmp_path / "params.yaml").write_text(json.dumps(params.model_dump(mode="json")))
        result = run_stage("baselines", str(prepared_dir), "baselines.json", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        scores = json.loads((tmp_path / "baselines.json").read_text())
        if not enabled:
            assert scores == {}
            continue
        assert set(scores) == {"majority", "logistic_regression", "gradient_boosting"}
        assert scores["majority"]["accuracy"] < 0.2
        assert scores["logistic_regression"]["valid"]["accuracy"] > 0.9
        assert scores["gradient_boosting"]["accuracy"] > 0.9
        assert "gradient_boosting, test: accuracy=" in result.stderr
        assert "tensorflow" not in result.stderr.lower()
