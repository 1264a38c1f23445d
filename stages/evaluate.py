"""Evaluate: score the trained model on the test split.

Reads:  <prepared>/test.parquet, <prepared>/schema.json, <model> (.keras).
Writes: <metrics> (test metrics at the top level) and <predictions> (actual and predicted
        label or value per test row: the data of DVC's confusion-matrix plot).
Params: evaluate.
"""

import argparse
import logging
from pathlib import Path

from mlpipe import data, io, metrics, stage
from mlpipe.config import load_params

log = logging.getLogger("mlpipe.evaluate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared", type=Path, help="folder written by the prepare stage")
    parser.add_argument("model", type=Path, help="trained .keras model")
    parser.add_argument("metrics", type=Path, help="where to write the test metrics JSON")
    parser.add_argument("predictions", type=Path, help="where to write per-row predictions CSV")
    args = parser.parse_args()
    params = load_params()

    from mlpipe import features, models

    # Data and model
    schema = data.read_schema(args.prepared)
    test = data.read_splits(args.prepared, ("test",))["test"]
    inputs, y_test = data.inputs_and_target(test, schema)
    model = models.load_model(args.model)

    # Score: raw columns in, as in serving
    raw = features.predict(model, inputs, params.evaluate.batch_size)
    scores = metrics.score(schema, y_test, raw)
    log.info("test: %s", " ".join(f"{k}={v}" for k, v in scores.items()))

    # Write
    rows = metrics.prediction_rows(schema, y_test, raw)
    io.write_text(args.predictions, rows.to_csv(index=False))
    io.write_json(args.metrics, scores)


if __name__ == "__main__":
    stage.run(main)
