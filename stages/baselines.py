"""Baselines: fit scikit-learn models on the training split and score them on the same splits as
the network, so that the results show what the network adds.

Reads:  <prepared>/{train,valid,test}.parquet and schema.json (splits in shards: skipped).
Writes: <out>: {baseline: metrics laid out as the evaluate stage's details, the test split's at
        the top level and the validation split's under `valid`}; {} with evaluate.baselines
        false. The baselines are a constant (majority class or mean), a linear model (logistic
        or linear regression) and gradient-boosted trees (HistGradientBoosting, default
        settings, native categories).
Params: evaluate.baselines. Nothing of the network is read, so this stage reruns only when the
        data changes. Imports no TensorFlow.
"""

import argparse
import logging
from pathlib import Path

from mlpipe.evaluation import baselines, metrics
from mlpipe.params import load_params
from mlpipe.schema import read_schema, read_splits
from mlpipe.util import files, stage
from mlpipe.util.shards import is_sharded

log = logging.getLogger("mlpipe.baselines")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared", type=Path, help="folder written by the prepare stage")
    parser.add_argument("out", type=Path, help="where to write the baselines' metrics JSON")
    args = parser.parse_args()
    stage.outputs(args.out)
    params = load_params()

    scores = {}
    if params.evaluate.baselines and is_sharded(args.prepared):
        # scikit-learn's models fit in memory: data in shards gets none (as baselines: false)
        log.info("baselines skipped: the splits are shards, too big for scikit-learn in memory")
    elif params.evaluate.baselines:
        schema = read_schema(args.prepared)
        scores = baselines.score(schema, read_splits(args.prepared))
        for name, values in scores.items():
            headline = metrics.headline(values, schema.task)
            log.info("%s, test: %s", name, " ".join(f"{k}={v}" for k, v in headline.items()))
    files.write_json(args.out, scores)


if __name__ == "__main__":
    stage.run(main)
