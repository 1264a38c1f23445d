"""The evaluate stage's operation: score a trained model on the validation and test splits,
beside the scikit-learn baselines, and draw the plots of the test split."""

from __future__ import annotations

import logging
from typing import NamedTuple

import keras
import numpy as np
import pandas as pd

from mlpipe.evaluation import baselines, metrics, plots
from mlpipe.features import encode_target, inputs_and_target, predict
from mlpipe.modeling.models import main_output
from mlpipe.params import EvaluateParams
from mlpipe.schema import Schema

log = logging.getLogger("mlpipe.evaluate")
SPLITS = ("valid", "test")


class Evaluation(NamedTuple):
    scores: dict  # the layout of metrics/evaluate.json
    plots: dict[str, bytes]  # {file name: content} of the plots folder


def evaluate(
    model: keras.Model,
    schema: Schema,
    splits: dict[str, pd.DataFrame],
    params: EvaluateParams,
    loss_weights: dict[str, float] | None = None,
    training: dict[str, dict[str, pd.DataFrame]] | None = None,
) -> Evaluation:
    """Score `model` (raw columns in, as in serving) on the valid and test splits.

    The test split's metrics are at the top level, the validation split's under `valid` and
    the baselines' (fitted on the train split) under `baseline`. For a model with several
    outputs the bare names are the main output's, and `loss` (the outputs' losses weighted by
    `loss_weights`) and `outputs.<name>` are added. `training` (DVCLive's curves) adds a chart.
    """
    y, outputs = {}, {}
    for name in SPLITS:
        inputs, y[name] = inputs_and_target(splits[name], schema)
        outputs[name] = predict(model, inputs, params.batch_size)
    raw = {name: main_output(output) for name, output in outputs.items()}

    split_scores = {name: metrics.score(schema, y[name], raw[name]) for name in SPLITS}
    for name, output in outputs.items():
        if isinstance(output, dict):  # several outputs: each one's scores too
            split_scores[name] |= metrics.output_scores(schema, y[name], output, loss_weights)
    scores = metrics.by_split(split_scores)
    log.info("test: %s", " ".join(f"{k}={scores[k]}" for k in metrics.metric_names(schema.task)))
    if params.baselines:
        scores["baseline"] = baseline_scores(schema, splits, y)
    return Evaluation(scores, plots.evaluation_files(schema, y["test"], raw["test"], training))


def baseline_scores(
    schema: Schema, splits: dict[str, pd.DataFrame], y: dict[str, np.ndarray]
) -> dict[str, dict]:
    """{baseline: metrics laid out as the model's}, fitted on the train split's feature columns."""
    columns = schema.feature_names
    results = baselines.score_baselines(
        splits["train"][columns],
        encode_target(splits["train"][schema.target], schema),
        {name: splits[name][columns] for name in SPLITS},
        y,
        schema.task,
        schema.n_classes,
    )
    return {name: metrics.by_split(s) for name, s in results.items()}
