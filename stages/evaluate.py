"""Evaluate: score the trained model and the baselines, draw the plots, apply the quality gate.

Reads:  <prepared>/{train,valid,test}.parquet and schema.json, <model> (model folder), and the
        DVCLive curves of training under --training.
Writes: <metrics> (test metrics at the top level, the validation split's under `valid`, the
        scikit-learn baselines' under `baseline`; for a model with several outputs, the bare
        names are the main output's, and `loss` (the weighted total) and `outputs.<name>` are
        added) and <plots>/ (CSV data of the DVC plots of the test split, and PNG versions of
        the charts that apply to the task).
Params: evaluate, train.loss_weights (to add up the outputs' losses). The gate
        (evaluate.thresholds) is checked after the metrics are written.
"""

import argparse
import logging
from pathlib import Path

from mlpipe import dataset
from mlpipe.evaluation import baselines, metrics, plots
from mlpipe.params import load_params
from mlpipe.util import files, stage

log = logging.getLogger("mlpipe.evaluate")
SPLITS = ("valid", "test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared", type=Path, help="folder written by the prepare stage")
    parser.add_argument("model", type=Path, help="trained model folder")
    parser.add_argument("metrics", type=Path, help="where to write the metrics JSON")
    parser.add_argument("plots", type=Path, help="folder to write plot data and PNGs into")
    parser.add_argument("--training", type=Path, help="DVCLive folder of the train stage")
    args = parser.parse_args()
    params = load_params()

    # Data: a threshold naming no metric of this task fails before any work
    schema = dataset.read_schema(args.prepared)
    metrics.check_threshold_names(params.evaluate.thresholds, schema["task"])
    splits = dataset.read_splits(args.prepared)

    from mlpipe import features
    from mlpipe.modeling import models

    # Predict: raw columns in, as in serving. `raw` is the main output's predictions.
    model = models.load_model_folder(args.model)
    y, outputs, raw = {}, {}, {}
    for name in SPLITS:
        inputs, y[name] = dataset.inputs_and_target(splits[name], schema)
        outputs[name] = features.predict(model, inputs, params.evaluate.batch_size)
        raw[name] = models.main_output(outputs[name])

    # Score the model (every output, when it has several), then the baselines on the same splits
    split_scores = {name: metrics.score(schema, y[name], raw[name]) for name in SPLITS}
    if isinstance(outputs["test"], dict):
        for name in SPLITS:
            split_scores[name] |= metrics.output_scores(
                schema,
                y[name],
                outputs[name],  # type: ignore[arg-type]  # a dict: the model has several outputs
                params.train.loss_weights,
            )
    scores = metrics.by_split(split_scores)
    log.info("test: %s", " ".join(f"{k}={scores[k]}" for k in metrics.metric_names(schema["task"])))
    if params.evaluate.baselines:
        columns = dataset.feature_names(schema)
        results = baselines.score_baselines(
            splits["train"][columns],
            dataset.encode_target(splits["train"][schema["target"]], schema),
            {name: splits[name][columns] for name in SPLITS},
            y,
            schema["task"],
            len(schema["classes"] or []),
        )
        scores["baseline"] = {name: metrics.by_split(s) for name, s in results.items()}

    # Write, then gate
    training = plots.read_training_curves(args.training) if args.training else None
    outputs = plots.evaluation_files(schema, y["test"], raw["test"], training)
    with files.atomic_dir(args.plots) as folder:
        for name, content in outputs.items():
            (folder / name).write_bytes(content)
    files.write_json(args.metrics, scores)
    metrics.check_gate(scores, params.evaluate.thresholds, str(args.metrics))


if __name__ == "__main__":
    stage.run(main)
