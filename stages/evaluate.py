"""Evaluate: score the trained model, draw the plots, apply the quality gate.

Reads:  <prepared>/{valid,test}.parquet (or their shards, batch by batch) and schema.json,
        <model> (model folder), and the DVCLive curves of training under --training.
Writes: <metrics> (the headline metrics of the test split, which `dvc exp show` shows),
        <details> (every score: the test split's at the top level, the validation split's under
        `valid`, per class under `per_class`; for a model with several outputs, the bare names
        are the main output's, and `loss` (the weighted total) and `outputs.<name>` are added)
        and <plots>/ (CSV data of the DVC
        plots of the test split, and PNG versions of the charts that apply to the task).
Params: evaluate.batch_size, evaluate.thresholds, train.loss_weights (to add up the outputs'
        losses). The gate (evaluate.thresholds) is checked after the metrics are written.
"""

import argparse
import logging
from pathlib import Path

from mlpipe.evaluation import metrics, plots
from mlpipe.params import load_params
from mlpipe.schema import read_schema, read_splits
from mlpipe.util import files, stage
from mlpipe.util.shards import is_sharded, read_sharded

log = logging.getLogger("mlpipe.evaluate")
SPLITS = ("valid", "test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared", type=Path, help="folder written by the prepare stage")
    parser.add_argument("model", type=Path, help="trained model folder")
    parser.add_argument("metrics", type=Path, help="where to write the headline metrics JSON")
    parser.add_argument("details", type=Path, help="where to write every score as JSON")
    parser.add_argument("plots", type=Path, help="folder to write plot data and PNGs into")
    parser.add_argument("--training", type=Path, help="DVCLive folder of the train stage")
    args = parser.parse_args()
    stage.outputs(args.metrics, args.details, args.plots)
    params = load_params()

    # Inputs: a threshold naming no metric of this task fails before any work
    schema = read_schema(args.prepared)
    metrics.check_threshold_names(params.evaluate.thresholds, schema.task)
    # Shards are read batch by batch, keeping only labels and predictions
    if is_sharded(args.prepared):
        splits: dict = read_sharded(args.prepared, SPLITS)
    else:
        splits = read_splits(args.prepared, SPLITS)
    training = plots.read_training_curves(args.training) if args.training else None

    from mlpipe.evaluation.evaluate import evaluate
    from mlpipe.modeling import models

    model = models.load_model_folder(args.model)

    # Score the model on the validation and test splits; draw the plots
    scores, plot_files = evaluate(
        model, schema, splits, params.evaluate.batch_size, params.train.loss_weights, training
    )

    # Write, then gate
    outputs = files.atomic_paths(args.plots, args.details, args.metrics, folders=[args.plots])
    with outputs as (folder, details_file, metrics_file):
        for name, content in plot_files.items():
            (folder / name).write_bytes(content)
        files.write_json(details_file, scores)
        files.write_json(metrics_file, metrics.headline(scores, schema.task))
    metrics.check_gate(scores, params.evaluate.thresholds, str(args.metrics))


if __name__ == "__main__":
    stage.run(main)
