"""Scoring predictions, and the quality gate on the scores. Imports no TensorFlow.

Every function takes plain arrays for one output of the model: class indices or target values,
and the model's raw outputs. A model with several outputs will score each output in a loop.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm

from mlpipe import MlpipeError
from mlpipe.schema import Schema

DIGITS = 6

CLASSIFICATION_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "roc_auc",
    "pr_auc",
    "log_loss",
)
REGRESSION_METRICS = ("rmse", "mae", "r2", "mape", "median_absolute_error")
# The few metrics of the test split that metrics/evaluate.json holds, so that `dvc exp show` and
# `dvc metrics diff` fit a terminal; the rest goes to the details file.
HEADLINE_METRICS = {
    "classification": ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "log_loss"),
    "regression": ("rmse", "mae", "r2"),
}
# Errors: smaller is better, so a threshold on one of these is a ceiling, not a floor.
LOWER_IS_BETTER = frozenset({"log_loss", "rmse", "mae", "mape", "median_absolute_error"})


class QualityGateError(MlpipeError):
    """A metric missed its threshold in `evaluate.thresholds`, or a threshold names no metric."""


def metric_names(task: str) -> tuple[str, ...]:
    return REGRESSION_METRICS if task == "regression" else CLASSIFICATION_METRICS


def class_probabilities(raw: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, n_classes) probabilities from a softmax output, or from one sigmoid unit."""
    raw = np.asarray(raw, dtype=np.float64)
    if n_classes == 2 and raw.ndim == 2 and raw.shape[1] == 1:
        raw = np.hstack([1 - raw, raw])
    return raw


def classification_metrics(
    y_true: np.ndarray, proba: np.ndarray, classes: Sequence | None = None
) -> dict:
    """Metrics of class indices `y_true` against (n, n_classes) probabilities.

    With `classes` (the labels, in index order) the result also holds `per_class`: precision,
    recall, F1 and support of each class, keyed by label.
    """
    n_classes = proba.shape[1]
    labels = np.arange(n_classes)
    # Renormalise in float64 so float32 rounding cannot trip scikit-learn's sum-to-one check.
    proba = np.asarray(proba, dtype=np.float64)
    proba = proba / proba.sum(axis=1, keepdims=True)
    y_pred = proba.argmax(axis=1)
    values = {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y_true, y_pred),
        "roc_auc": _one_vs_rest(skm.roc_auc_score, y_true, proba),
        "pr_auc": _one_vs_rest(skm.average_precision_score, y_true, proba),
        "log_loss": skm.log_loss(y_true, proba, labels=labels),
    }
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=0
        )
        values |= {
            f"precision_{average}": precision,
            f"recall_{average}": recall,
            f"f1_{average}": f1,
        }
    scores: dict = {key: _rounded(value) for key, value in values.items()}
    if classes is not None:
        scores["per_class"] = per_class_table(y_true, y_pred, classes)
    return scores


def per_class_table(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence) -> dict:
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=np.arange(len(classes)), zero_division=0
    )
    return {
        str(label): {
            "precision": _rounded(precision[i]),
            "recall": _rounded(recall[i]),
            "f1": _rounded(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(classes)
    }


def _one_vs_rest(score_fn, y_true: np.ndarray, proba: np.ndarray) -> float | None:
    """The positive class's score for two classes; else the mean over classes, one vs rest.

    A class that is absent from `y_true`, or the only class in it, has no score and is left out
    of the mean (scikit-learn would raise instead); None when no class can be scored.
    """
    classes = [1] if proba.shape[1] == 2 else range(proba.shape[1])
    scores = [
        score_fn(y_true == c, proba[:, c]) for c in classes if 0 < np.sum(y_true == c) < len(y_true)
    ]
    return float(np.mean(scores)) if scores else None


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    values = {
        "rmse": skm.root_mean_squared_error(y_true, y_pred),
        "mae": skm.mean_absolute_error(y_true, y_pred),
        "r2": skm.r2_score(y_true, y_pred) if len(y_true) > 1 else None,
        "mape": skm.mean_absolute_percentage_error(y_true, y_pred),
        "median_absolute_error": skm.median_absolute_error(y_true, y_pred),
    }
    return {key: _rounded(value) for key, value in values.items()}


def score(schema: Schema, y_true: np.ndarray, raw_predictions: np.ndarray) -> dict:
    """The metrics for the schema's task, from the model's raw outputs (one output)."""
    if schema.task == "regression":
        return regression_metrics(y_true, raw_predictions)
    proba = class_probabilities(raw_predictions, schema.n_classes)
    return classification_metrics(y_true, proba, schema.classes)


def output_loss(schema: Schema, y_true: np.ndarray, raw_predictions: np.ndarray) -> float:
    """The loss an output is trained on: mean squared error, or cross-entropy."""
    if schema.task == "regression":
        y_pred = np.asarray(raw_predictions, dtype=np.float64).reshape(-1)
        return float(np.mean((np.asarray(y_true, dtype=np.float64) - y_pred) ** 2))
    proba = class_probabilities(raw_predictions, schema.n_classes)
    proba = proba / proba.sum(axis=1, keepdims=True)
    return float(skm.log_loss(y_true, proba, labels=np.arange(proba.shape[1])))


def output_scores(
    schema: Schema,
    y_true: np.ndarray,
    outputs: dict[str, np.ndarray],
    loss_weights: dict[str, float] | None = None,
) -> dict:
    """For a model with several outputs: `loss`, the sum of the outputs' losses weighted as in
    training (without any L2 penalty), and `outputs.<name>`: each output's metrics and `loss`."""
    per_output, total = {}, 0.0
    for name, raw in outputs.items():
        loss = output_loss(schema, y_true, raw)
        total += (loss_weights or {}).get(name, 1.0) * loss
        per_output[name] = {**score(schema, y_true, raw), "loss": _rounded(loss)}
    return {"loss": _rounded(total), "outputs": per_output}


def by_split(scores: dict[str, dict]) -> dict:
    """The layout of metrics/evaluate.json: the test split at the top, the others nested."""
    return {**scores["test"], **{name: s for name, s in scores.items() if name != "test"}}


def headline(scores: dict, task: str) -> dict:
    """The headline metrics of `scores` (laid out by `by_split`): the test split's main ones,
    and `loss`, the weighted total, for a model with several outputs."""
    kind = "regression" if task == "regression" else "classification"
    names = (*HEADLINE_METRICS[kind], "loss")
    return {name: scores[name] for name in names if name in scores}


def check_threshold_names(thresholds: dict[str, float], task: str) -> None:
    """Fail before any scoring when a threshold names a metric this task does not produce."""
    valid = metric_names(task)
    unknown = [name for name in thresholds if name not in valid]
    if not unknown:
        return
    problems = []
    for name in unknown:
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        problems.append(f"`{name}`" + (f" (did you mean `{close[0]}`?)" if close else ""))
    raise QualityGateError(
        f"evaluate.thresholds: {', '.join(problems)} is not a {task} metric; "
        f"valid names are {', '.join(valid)}"
    )


def missed_thresholds(scores: dict, thresholds: dict[str, float]) -> list[str]:
    """One line per metric that missed its floor (or ceiling, for errors); empty if none did."""
    missed = []
    for name, limit in thresholds.items():
        value = scores.get(name)
        lower = name in LOWER_IS_BETTER
        if value is None:
            missed.append(f"{name} is undefined on this split (threshold {limit})")
        elif value > limit if lower else value < limit:
            bound = "above its ceiling" if lower else "below its floor"
            missed.append(f"{name} = {value} is {bound} {limit}")
    return missed


def check_gate(scores: dict, thresholds: dict[str, float], written_to: str) -> None:
    missed = missed_thresholds(scores, thresholds)
    if missed:
        raise QualityGateError(
            "quality gate failed on the test split (evaluate.thresholds):\n"
            + "\n".join(f"  - {line}" for line in missed)
            + f"\nThe metrics were written to {written_to}."
        )


def _rounded(value) -> float | None:
    """Rounded so that files diff well; NaN and infinity are not JSON, so they become null."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), DIGITS)
