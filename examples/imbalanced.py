"""Class weights on an imbalanced problem: minority-class recall with and without `balanced`.

A synthetic binary problem with 5 % positives (scikit-learn's make_classification), split,
built and trained with the project's own functions. Run: `python examples/imbalanced.py`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import make_classification
from sklearn.metrics import balanced_accuracy_score, recall_score

from mlpipe import dataset, features
from mlpipe.modeling import models
from mlpipe.params import parse_params
from mlpipe.training import fit
from mlpipe.util import markdown, runtime


def imbalanced_frame(seed: int = 0, rows: int = 3000) -> pd.DataFrame:
    x, y = make_classification(
        n_samples=rows,
        n_features=8,
        n_informative=4,
        weights=[0.95],
        class_sep=0.7,
        flip_y=0.0,
        random_state=seed,
    )
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
    return frame.assign(label=y)


def train_and_score(frame: pd.DataFrame, class_weight, seed: int = 0) -> dict:
    params = parse_params(
        {
            "seed": seed,
            "data": {"target": "label"},
            "model": {"hidden_units": [32, 16]},
            "train": {"epochs": 30, "class_weight": class_weight},
        }
    )
    splits, schema = dataset.prepare(frame, None, params.data, seed)
    runtime.seed_everything(seed)
    built = models.build_model(params.model, schema, splits["train"])
    rate = float(params.train.optimizer.learning_rate)  # a number in these params
    with tempfile.TemporaryDirectory() as tmp:
        dirs = fit.RunDirs.inside(Path(tmp))
        model, _ = fit.train(
            built, params.train, splits, schema, dirs, seed=params.seed, learning_rate=rate
        )
    inputs, y_test = features.inputs_and_target(splits["test"], schema)
    predicted = (np.asarray(features.predict(model, inputs, 256))[:, 0] > 0.5).astype(int)
    return {
        "minority_recall": recall_score(y_test, predicted, pos_label=1),
        "majority_recall": recall_score(y_test, predicted, pos_label=0),
        "balanced_accuracy": balanced_accuracy_score(y_test, predicted),
    }


def main() -> None:
    frame = imbalanced_frame()
    print(f"positives: {frame['label'].mean():.1%} of {len(frame)} rows")
    header = ["train.class_weight", "minority recall", "majority recall", "balanced accuracy"]
    rows = []
    for setting in (None, "balanced"):
        scores = train_and_score(frame, setting)
        rows.append([setting or "null", *(f"{value:.3f}" for value in scores.values())])
    print(markdown.table(header, rows))


if __name__ == "__main__":
    main()
