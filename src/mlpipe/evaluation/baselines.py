"""Scikit-learn models scored beside the MLP, so that a reader sees what the network adds: a
constant, a linear model, and gradient-boosted trees, the usual strongest model on tables.

They take the raw feature columns, numeric or not, with missing values, and learn everything
(imputation, scaling, categories, bins) from the training split only. Imports no TensorFlow.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    OneHotEncoder,
    OrdinalEncoder,
    StandardScaler,
)
from threadpoolctl import threadpool_limits

from mlpipe.evaluation import metrics
from mlpipe.schema import Schema, encode_target

# lbfgs is deterministic; the seed matters to the boosted trees' early stopping (on by default
# from 10,000 rows, on a random tenth of the training split), and is fixed here so that the
# baselines do not rerun, or move, when the pipeline's seed changes.
RANDOM_STATE = 0
MAX_ITER = 2000
# The boosted trees bin each feature into at most 255 bins, so a categorical column may have at
# most 255 categories: the rarest beyond that share one.
MAX_TREE_CATEGORIES = 255


def is_numeric(column: pd.Series) -> bool:
    """Numbers are scaled; everything else (strings, categories, booleans) is one-hot encoded."""
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _as_text(x) -> np.ndarray:
    """Category values as strings, with every kind of missing value (None, NaN, pd.NA) as NaN."""
    frame = pd.DataFrame(x)
    # Object arrays from the start: stacking lists would make one string array first, in which
    # a missing value becomes the category "nan".
    return np.column_stack(
        [
            np.array([np.nan if pd.isna(v) else str(v) for v in frame[column]], dtype=object)
            for column in frame.columns
        ]
    )


def _as_float(x) -> np.ndarray:
    """Numbers as float64, with every kind of missing value (NaN, pd.NA) as NaN."""
    return pd.DataFrame(x).to_numpy(dtype=np.float64, na_value=np.nan)


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


def tree_preprocessor(train_x: pd.DataFrame) -> ColumnTransformer:
    """For the boosted trees: categories as integer codes (unseen and missing values as missing,
    which the trees route on their own), numbers as they are, missing values included."""
    other = [c for c in train_x.columns if not is_numeric(train_x[c])]
    categories = make_pipeline(
        FunctionTransformer(_as_text, feature_names_out="one-to-one"),
        OrdinalEncoder(
            handle_unknown="use_encoded_value",
            unknown_value=np.nan,
            encoded_missing_value=np.nan,
            max_categories=MAX_TREE_CATEGORIES,
        ),
    )
    numeric = [c for c in train_x.columns if c not in other]
    numbers = FunctionTransformer(_as_float, feature_names_out="one-to-one")
    # Categorical columns first, so that the trees' `categorical_features` are the first ones.
    return ColumnTransformer([("categorical", categories, other), ("numeric", numbers, numeric)])


def _tree_pipeline(train_x: pd.DataFrame, task: str) -> Pipeline:
    n_categorical = sum(not is_numeric(train_x[c]) for c in train_x.columns)
    flags = [i < n_categorical for i in range(train_x.shape[1])]
    trees = (
        HistGradientBoostingRegressor if task == "regression" else HistGradientBoostingClassifier
    )
    # Default settings: the baseline a reader would fit in two lines, with native categories.
    model = trees(categorical_features=flags, random_state=RANDOM_STATE)
    return Pipeline([("prepare", tree_preprocessor(train_x)), ("model", model)])


def baseline_models(task: str) -> dict[str, object]:
    """The models that take `preprocessor`'s matrix; `gradient_boosting` comes on its own."""
    if task == "regression":
        return {"mean": DummyRegressor(strategy="mean"), "linear_regression": LinearRegression()}
    return {
        # `prior` predicts the majority class, and its probabilities are the training class
        # frequencies, so that its log loss is finite.
        "majority": DummyClassifier(strategy="prior"),
        "logistic_regression": LogisticRegression(max_iter=MAX_ITER, random_state=RANDOM_STATE),
    }


def baseline_pipelines(train_x: pd.DataFrame, task: str) -> dict[str, Pipeline]:
    pipelines = {
        name: Pipeline([("prepare", preprocessor(train_x)), ("model", model)])
        for name, model in baseline_models(task).items()
    }
    pipelines["gradient_boosting"] = _tree_pipeline(train_x, task)
    return pipelines


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
    # One thread: the trees' OpenMP threads spin while they wait, and on a machine that runs
    # anything else (two queued experiments, a test suite) that made a 5 s fit take 90 s.
    with threadpool_limits(limits=1):
        for name, pipeline in baseline_pipelines(train_x, task).items():
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


def score(schema: Schema, splits: dict[str, pd.DataFrame]) -> dict[str, dict]:
    """{baseline: metrics laid out as the model's in the evaluate stage's details: the test
    split's at the top level, the validation split's under `valid`}. Fitted on the training
    split's feature columns."""
    columns = schema.feature_names
    y = {name: encode_target(splits[name][schema.target], schema) for name in splits}
    scored = ("valid", "test")
    results = score_baselines(
        splits["train"][columns],
        y["train"],
        {name: splits[name][columns] for name in scored},
        {name: y[name] for name in scored},
        schema.task,
        schema.n_classes,
    )
    return {name: metrics.by_split(s) for name, s in results.items()}
