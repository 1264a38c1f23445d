"""Simple scikit-learn models scored beside the MLP, so that a reader sees what the network adds.

They take the raw feature columns, numeric or not, with missing values, and learn everything
(imputation, scaling, categories) from the training split only. Imports no TensorFlow.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from mlpipe.evaluation import metrics

# lbfgs is deterministic; the seed only matters to solvers that shuffle, and is fixed here so
# that the baselines do not rerun, or move, when the pipeline's seed changes.
RANDOM_STATE = 0
MAX_ITER = 2000


def is_numeric(column: pd.Series) -> bool:
    """Numbers are scaled; everything else (strings, categories, booleans) is one-hot encoded."""
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _as_text(x) -> np.ndarray:
    """Category values as strings, with every kind of missing value (None, NaN, pd.NA) as NaN."""
    frame = pd.DataFrame(x)
    return np.column_stack(
        [[np.nan if pd.isna(v) else str(v) for v in frame[column]] for column in frame.columns]
    ).astype(object)


def preprocessor(train_x: pd.DataFrame) -> ColumnTransformer:
    """Median-impute and standardize numeric columns; mode-impute and one-hot encode the rest."""
    numeric = [c for c in train_x.columns if is_numeric(train_x[c])]
    other = [c for c in train_x.columns if c not in numeric]
    parts = []
    if numeric:
        parts.append(
            ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric)
        )
    if other:
        categories = make_pipeline(
            FunctionTransformer(_as_text, feature_names_out="one-to-one"),
            SimpleImputer(strategy="most_frequent"),
            OneHotEncoder(handle_unknown="ignore"),
        )
        parts.append(("categorical", categories, other))
    return ColumnTransformer(parts)


def baseline_models(task: str) -> dict[str, object]:
    if task == "regression":
        return {"mean": DummyRegressor(strategy="mean"), "linear_regression": LinearRegression()}
    return {
        # `prior` predicts the majority class, and its probabilities are the training class
        # frequencies, so that its log loss is finite.
        "majority": DummyClassifier(strategy="prior"),
        "logistic_regression": LogisticRegression(max_iter=MAX_ITER, random_state=RANDOM_STATE),
    }


def score_baselines(
    train_x: pd.DataFrame,
    y_train: np.ndarray,
    eval_x: dict[str, pd.DataFrame],
    y_eval: dict[str, np.ndarray],
    task: str,
    n_classes: int | None = None,
) -> dict[str, dict[str, dict]]:
    """Fit each baseline on the training split; return {baseline: {split: metrics}}.

    For classification, `y_*` are class indices and `n_classes` the number of classes.
    """
    results = {}
    for name, model in baseline_models(task).items():
        pipeline = Pipeline([("prepare", preprocessor(train_x)), ("model", model)])
        pipeline.fit(train_x, y_train)
        results[name] = {
            split: _score(pipeline, x, y_eval[split], task, n_classes)
            for split, x in eval_x.items()
        }
    return results


def _score(pipeline: Pipeline, x: pd.DataFrame, y: np.ndarray, task: str, n_classes) -> dict:
    if task == "regression":
        return metrics.regression_metrics(y, pipeline.predict(x))
    # A class missing from the training split gets no column from scikit-learn: give it zeros.
    proba = np.zeros((len(x), n_classes))
    proba[:, pipeline.classes_] = pipeline.predict_proba(x)
    return metrics.classification_metrics(y, proba)
