"""The data of the evaluation plots (CSV, for DVC) and PNG versions of them. Imports no TensorFlow.

Every task writes the same data files, so that `dvc.yaml` declares one set of plots and
`dvc plots show` never meets a missing file: a chart that does not apply to the task (ROC for
regression, residuals for classification) gets a file with its header and no rows, which DVC
draws as nothing. PNGs are written only for the charts that apply.

Files stay small whatever the size of the test split: curves are sampled on a fixed grid and
scatter plots on a fixed random subset. Only the confusion matrix needs one row per example,
because DVC's template counts the rows itself.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn import metrics as skm

from mlpipe.evaluation.metrics import DIGITS, class_probabilities
from mlpipe.schema import Schema

CURVE_POINTS = 101  # ROC and precision-recall curves: one point per 0.01 of the x axis
CALIBRATION_BINS = 10
MAX_SCATTER_POINTS = 1000
SCATTER_SEED = 0
DPI = 100

# The data file of every chart in dvc.yaml's `plots:`, with its columns, for every task.
DATA_COLUMNS = {
    "confusion.csv": ["actual", "predicted"],
    "roc.csv": ["fpr", "tpr"],
    "precision_recall.csv": ["recall", "precision"],
    "calibration.csv": ["predicted", "observed", "count"],
    "residuals.csv": ["actual", "predicted", "residual"],
}
CLASSIFICATION_DATA = ("confusion.csv", "roc.csv", "precision_recall.csv", "calibration.csv")
REGRESSION_DATA = ("residuals.csv",)


def confusion_rows(schema: Schema, y_true: np.ndarray, raw_predictions: np.ndarray) -> pd.DataFrame:
    """Actual and predicted label of every example: the data of DVC's confusion templates."""
    classes = np.asarray(schema.classes, dtype=object)
    proba = class_probabilities(raw_predictions, len(classes))
    return pd.DataFrame({"actual": classes[y_true], "predicted": classes[proba.argmax(axis=1)]})


def _scored_classes(y_true: np.ndarray, proba: np.ndarray) -> list[int]:
    """The positive class for two classes, else every class with positives and negatives."""
    classes = [1] if proba.shape[1] == 2 else range(proba.shape[1])
    return [c for c in classes if 0 < np.sum(y_true == c) < len(y_true)]


def roc_points(y_true: np.ndarray, proba: np.ndarray) -> pd.DataFrame:
    """ROC curve on a fixed false-positive-rate grid; several classes: the macro average."""
    grid = np.linspace(0, 1, CURVE_POINTS)
    curves = []
    for c in _scored_classes(y_true, proba):
        fpr, tpr, _ = skm.roc_curve(y_true == c, proba[:, c])
        curves.append(np.interp(grid, fpr, tpr))
    if not curves:
        return _empty("roc.csv")
    return pd.DataFrame({"fpr": grid, "tpr": np.mean(curves, axis=0)})


def precision_recall_points(y_true: np.ndarray, proba: np.ndarray) -> pd.DataFrame:
    """Interpolated precision (the best at this recall or more) on a fixed recall grid."""
    grid = np.linspace(0, 1, CURVE_POINTS)
    curves = []
    for c in _scored_classes(y_true, proba):
        precision, recall, _ = skm.precision_recall_curve(y_true == c, proba[:, c])
        order = np.argsort(recall, kind="stable")
        recall, precision = recall[order], precision[order]
        best_from_here = np.maximum.accumulate(precision[::-1])[::-1]
        curves.append(best_from_here[np.searchsorted(recall, grid, side="left")])
    if not curves:
        return _empty("precision_recall.csv")
    return pd.DataFrame({"recall": grid, "precision": np.mean(curves, axis=0)})


def calibration_points(y_true: np.ndarray, proba: np.ndarray) -> pd.DataFrame:
    """Reliability curve: mean predicted probability against the observed frequency, per bin.

    Two classes: the positive class's probability. More: the top class's probability against
    how often the top class is right (confidence calibration).
    """
    if proba.shape[1] == 2:
        predicted, outcome = proba[:, 1], y_true == 1
    else:
        predicted, outcome = proba.max(axis=1), proba.argmax(axis=1) == y_true
    edges = np.linspace(0, 1, CALIBRATION_BINS + 1)
    bins = np.clip(np.digitize(predicted, edges[1:-1]), 0, CALIBRATION_BINS - 1)
    frame = pd.DataFrame({"bin": bins, "predicted": predicted, "observed": outcome.astype(float)})
    grouped = frame.groupby("bin").agg(
        predicted=("predicted", "mean"), observed=("observed", "mean"), count=("bin", "size")
    )
    return grouped.reset_index(drop=True)


def residual_rows(y_true: np.ndarray, y_pred: np.ndarray) -> pd.DataFrame:
    """Actual, predicted and residual (actual - predicted) of at most MAX_SCATTER_POINTS rows."""
    y_true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    keep = np.arange(len(y_true))
    if len(keep) > MAX_SCATTER_POINTS:
        rng = np.random.default_rng(SCATTER_SEED)
        keep = np.sort(rng.choice(len(keep), MAX_SCATTER_POINTS, replace=False))
    actual, predicted = y_true[keep], y_pred[keep]
    return pd.DataFrame({"actual": actual, "predicted": predicted, "residual": actual - predicted})


def plot_data(schema: Schema, y_true: np.ndarray, raw_predictions: np.ndarray) -> dict:
    """{file name: frame} for every file in DATA_COLUMNS; those of the other task are empty."""
    frames = {name: _empty(name) for name in DATA_COLUMNS}
    if schema.task == "regression":
        frames["residuals.csv"] = residual_rows(y_true, raw_predictions)
        return frames
    proba = class_probabilities(raw_predictions, schema.n_classes)
    frames["confusion.csv"] = confusion_rows(schema, y_true, raw_predictions)
    frames["roc.csv"] = roc_points(y_true, proba)
    frames["precision_recall.csv"] = precision_recall_points(y_true, proba)
    frames["calibration.csv"] = calibration_points(y_true, proba)
    return frames


def _empty(name: str) -> pd.DataFrame:
    return pd.DataFrame({column: [] for column in DATA_COLUMNS[name]})


def to_csv(frame: pd.DataFrame) -> str:
    return frame.round(DIGITS).to_csv(index=False)


# PNG versions


def png(figure: Figure) -> bytes:
    """PNG bytes that depend only on the figure: no software version or date in the metadata."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def confusion_figure(classes: Sequence, y_true: np.ndarray, y_pred: np.ndarray) -> Figure:
    labels = np.arange(len(classes))
    counts = skm.confusion_matrix(y_true, y_pred, labels=labels)
    rows = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    size = min(4 + 0.3 * len(classes), 12)
    figure = Figure(figsize=(2 * size + 1, size), layout="constrained")
    for ax, matrix, title, fmt in zip(
        figure.subplots(1, 2),
        (counts, normalized),
        ("counts", "normalized by actual class"),
        ("d", ".2f"),
        strict=True,
    ):
        ax.imshow(matrix, cmap="Blues")
        ax.set(
            title=f"Confusion matrix (test), {title}",
            xlabel="predicted",
            ylabel="actual",
            xticks=labels,
            yticks=labels,
            xticklabels=[str(c) for c in classes],
            yticklabels=[str(c) for c in classes],
        )
        if len(classes) <= 20:
            threshold = matrix.max() / 2
            for (i, j), value in np.ndenumerate(matrix):
                color = "white" if value > threshold else "black"
                ax.text(j, i, format(value, fmt), ha="center", va="center", color=color, size=8)
    return figure


def curve_figure(
    frame: pd.DataFrame, x: str, y: str, title: str, diagonal: bool = False, marker: str = ""
) -> Figure:
    figure = Figure(figsize=(5, 4.5), layout="constrained")
    ax = figure.subplots()
    if diagonal:
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.plot(frame[x], frame[y], marker=marker)
    ax.set(title=title, xlabel=x, ylabel=y, xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    return figure


def scatter_figure(frame: pd.DataFrame, x: str, y: str, title: str, reference: str) -> Figure:
    figure = Figure(figsize=(5, 4.5), layout="constrained")
    ax = figure.subplots()
    ax.scatter(frame[x], frame[y], s=8, alpha=0.5)
    low, high = frame[x].min(), frame[x].max()
    if reference == "identity":
        low, high = min(low, frame[y].min()), max(high, frame[y].max())
        ax.plot([low, high], [low, high], linestyle="--", color="grey", linewidth=1)
    else:
        ax.axhline(0, linestyle="--", color="grey", linewidth=1)
    ax.set(title=title, xlabel=x, ylabel=y)
    ax.grid(alpha=0.3)
    return figure


def training_figure(curves: dict[str, dict[str, pd.DataFrame]]) -> Figure:
    """One panel per logged metric, with the training and validation series."""
    names = sorted(curves, key=lambda n: (n != "loss", n))
    columns = min(len(names), 3)
    rows = -(-len(names) // columns)
    figure = Figure(figsize=(4.5 * columns, 3.5 * rows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for ax, name in zip(axes, names, strict=False):
        for split, frame in sorted(curves[name].items(), key=lambda item: item[0] != "train"):
            label = "validation" if split == "eval" else split
            ax.plot(frame["step"] + 1, frame[name], label=label)
        ax.set(title=name, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    for ax in axes[len(names) :]:
        ax.set_axis_off()
    return figure


def figures(
    schema: Schema,
    y_true: np.ndarray,
    raw_predictions: np.ndarray,
    frames: dict[str, pd.DataFrame],
    training: dict[str, dict[str, pd.DataFrame]] | None = None,
) -> dict[str, Figure]:
    """{PNG name: figure} of the charts that apply to the task; `frames` is plot_data's."""
    result = {}
    if training:
        result["training.png"] = training_figure(training)
    if schema.task == "regression":
        rows = frames["residuals.csv"]
        result["predicted_vs_actual.png"] = scatter_figure(
            rows, "actual", "predicted", "Predicted vs actual (test)", "identity"
        )
        result["residuals.png"] = scatter_figure(
            rows, "predicted", "residual", "Residuals (test)", "zero"
        )
        return result
    proba = class_probabilities(raw_predictions, schema.n_classes)
    several = "" if proba.shape[1] == 2 else ", macro average"
    result["confusion.png"] = confusion_figure(schema.classes or (), y_true, proba.argmax(axis=1))
    result["roc.png"] = curve_figure(
        frames["roc.csv"], "fpr", "tpr", f"ROC curve (test{several})", diagonal=True
    )
    result["precision_recall.png"] = curve_figure(
        frames["precision_recall.csv"], "recall", "precision", f"Precision-recall (test{several})"
    )
    top = "positive class" if proba.shape[1] == 2 else "top class"
    result["calibration.png"] = curve_figure(
        frames["calibration.csv"],
        "predicted",
        "observed",
        f"Calibration (test, {top})",
        diagonal=True,
        marker="o",
    )
    return result


def evaluation_files(
    schema: Schema,
    y_true: np.ndarray,
    raw_predictions: np.ndarray,
    training: dict[str, dict[str, pd.DataFrame]] | None = None,
) -> dict[str, bytes]:
    """{file name: content} of everything the evaluate stage writes into its plots folder."""
    frames = plot_data(schema, y_true, raw_predictions)
    files = {name: to_csv(frame).encode() for name, frame in frames.items()}
    for name, figure in figures(schema, y_true, raw_predictions, frames, training).items():
        files[name] = png(figure)
    return files


def read_training_curves(dvclive_dir: Path) -> dict[str, dict[str, pd.DataFrame]]:
    """{metric: {split: frame of step and value}} from DVCLive's `plots/metrics/<split>/*.tsv`."""
    curves: dict[str, dict[str, pd.DataFrame]] = {}
    for path in sorted((Path(dvclive_dir) / "plots" / "metrics").glob("*/*.tsv")):
        curves.setdefault(path.stem, {})[path.parent.name] = pd.read_csv(path, sep="\t")
    return curves
