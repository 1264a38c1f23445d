"""Scoring predictions. Imports no TensorFlow, so it is cheap to test and reuse."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics as skm

DIGITS = 6


def class_probabilities(raw: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, n_classes) probabilities from a softmax output, or from one sigmoid unit."""
    raw = np.asarray(raw, dtype=np.float64)
    if n_classes == 2 and raw.ndim == 2 and raw.shape[1] == 1:
        raw = np.hstack([1 - raw, raw])
    return raw


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict:
    """Metrics of class indices `y_true` against (n, n_classes) probabilities."""
    n_classes = proba.shape[1]
    labels = np.arange(n_classes)
    y_pred = proba.argmax(axis=1)
    # Renormalise in float64 so float32 rounding cannot trip scikit-learn's sum-to-one check.
    proba = proba / proba.sum(axis=1, keepdims=True)
    if n_classes == 2:
        roc_auc = skm.roc_auc_score(y_true, proba[:, 1])
    else:
        roc_auc = skm.roc_auc_score(
            y_true, proba, multi_class="ovr", average="macro", labels=labels
        )
    values = {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y_true, y_pred),
        "f1_macro": skm.f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0),
        "precision_macro": skm.precision_score(
            y_true, y_pred, average="macro", labels=labels, zero_division=0
        ),
        "recall_macro": skm.recall_score(
            y_true, y_pred, average="macro", labels=labels, zero_division=0
        ),
        "roc_auc": roc_auc,
        "log_loss": skm.log_loss(y_true, proba, labels=labels),
    }
    return {key: round(float(value), DIGITS) for key, value in values.items()}


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    values = {
        "rmse": skm.root_mean_squared_error(y_true, y_pred),
        "mae": skm.mean_absolute_error(y_true, y_pred),
        "r2": skm.r2_score(y_true, y_pred),
    }
    return {key: round(float(value), DIGITS) for key, value in values.items()}


def score(schema: dict, y_true: np.ndarray, raw_predictions: np.ndarray) -> dict:
    """The metrics for the schema's task, from the model's raw outputs."""
    if schema["task"] == "regression":
        return regression_metrics(y_true, raw_predictions)
    proba = class_probabilities(raw_predictions, len(schema["classes"]))
    return classification_metrics(y_true, proba)


def prediction_rows(schema: dict, y_true: np.ndarray, raw_predictions: np.ndarray) -> pd.DataFrame:
    """One row per example: actual and predicted label (or value), for DVC plot templates."""
    if schema["task"] == "regression":
        predicted = np.asarray(raw_predictions, dtype=np.float64).reshape(-1).round(DIGITS)
        return pd.DataFrame({"actual": y_true, "predicted": predicted})
    classes = np.asarray(schema["classes"], dtype=object)
    proba = class_probabilities(raw_predictions, len(classes))
    return pd.DataFrame({"actual": classes[y_true], "predicted": classes[proba.argmax(axis=1)]})
