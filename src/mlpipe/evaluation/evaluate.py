"""The evaluate stage's operation: score a trained model on the validation and test splits, and
draw the plots of the test split."""

from __future__ import annotations

import logging
from typing import NamedTuple

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from mlpipe.evaluation import metrics, plots
from mlpipe.features import inputs_and_target, predict
from mlpipe.modeling.models import main_output
from mlpipe.schema import Schema
from mlpipe.util.shards import ShardedSplit

log = logging.getLogger("mlpipe.evaluate")
SPLITS = ("valid", "test")


class Evaluation(NamedTuple):
    scores: dict  # the layout of metrics/evaluate.json
    plots: dict[str, bytes]  # {file name: content} of the plots folder


def evaluate(
    model: keras.Model,
    schema: Schema,
    splits: dict[str, pd.DataFrame] | dict[str, ShardedSplit],
    batch_size: int,
    loss_weights: dict[str, float] | None = None,
    training: dict[str, dict[str, pd.DataFrame]] | None = None,
) -> Evaluation:
    """Score `model` (raw columns in, as in serving) on the valid and test splits.

    The test split's metrics are at the top level and the validation split's under `valid`
    (the baselines are the baselines stage's, `baselines.score`). For a model with several
    outputs the bare names are the main output's, and `loss` (the outputs' losses weighted by
    `loss_weights`) and `outputs.<name>` are added. `training` (DVCLive's curves) adds a chart.
    """
    y, outputs = {}, {}
    for name in SPLITS:
        split = splits[name]
        if isinstance(split, ShardedSplit):
            y[name], outputs[name] = streamed_predictions(model, schema, split, batch_size)
        else:
            inputs, y[name] = inputs_and_target(split, schema)
            outputs[name] = predict(model, inputs, batch_size)
    raw = {name: main_output(output) for name, output in outputs.items()}

    split_scores = {name: metrics.score(schema, y[name], raw[name]) for name in SPLITS}
    for name, output in outputs.items():
        if isinstance(output, dict):  # several outputs: each one's scores too
            split_scores[name] |= metrics.output_scores(schema, y[name], output, loss_weights)
    scores = metrics.by_split(split_scores)
    log.info("test: %s", " ".join(f"{k}={scores[k]}" for k in metrics.metric_names(schema.task)))
    return Evaluation(scores, plots.evaluation_files(schema, y["test"], raw["test"], training))


def streamed_predictions(
    model: keras.Model, schema: Schema, split: ShardedSplit, batch_size: int
) -> tuple[np.ndarray, np.ndarray | dict[str, np.ndarray]]:
    """Labels and predictions of a split in shards, read batch by batch: memory holds the
    labels and predictions of the split, never its features."""
    labels, outputs = [], []
    for frame in split.frames():
        inputs, target = inputs_and_target(frame, schema)
        labels.append(target)
        outputs.append(predict(model, inputs, batch_size))
    joined = tf.nest.map_structure(lambda *parts: np.concatenate(parts), *outputs)
    return np.concatenate(labels), joined
