"""Build: the untrained model: preprocessing learned on the training split, then the network
in the Keras API of `model.api` (Sequential, Functional Wide & Deep, or the subclass).

The model takes raw named columns. Numeric ones are imputed with training medians, standardized
and clipped; categorical ones are one-hot encoded, with a bucket for values unseen in training.
A Wide & Deep network gets one such encoding per path. model.numeric_encoding robust or
periodic scales by median and quartiles with smooth clipping instead, and
model.categorical_encoding embedding passes each category as an index to the network's
embeddings (src/mlpipe/modeling/encodings.py).

Reads:  <prepared>/train.parquet (or the shards <prepared>/train/part-*.parquet, in one
        streaming pass per statistic: see mlpipe.stream_stats), <prepared>/schema.json.
Writes: <model> (a model folder: model.keras, or for the subclass preprocess.keras,
        core.weights.h5 and core.json) and <summary> (inputs, layers, output shapes, parameter
        counts).
Params: seed, model.
"""

import argparse
import logging
from pathlib import Path

from mlpipe.params import load_params
from mlpipe.schema import read_schema, read_splits
from mlpipe.stream_stats import ShardStats
from mlpipe.util import files, stage
from mlpipe.util.shards import ShardedSplit, is_sharded

log = logging.getLogger("mlpipe.build")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared", type=Path, help="folder written by the prepare stage")
    parser.add_argument("model", type=Path, help="folder to write the untrained model into")
    parser.add_argument("summary", type=Path, help="where to write the model summary")
    args = parser.parse_args()
    stage.outputs(args.model, args.summary)
    params = load_params()

    from mlpipe.modeling import models
    from mlpipe.util import runtime

    runtime.seed_everything(params.seed)

    # Data: only the training split is seen here
    schema = read_schema(args.prepared)
    if is_sharded(args.prepared):  # too big to load: its statistics in a streaming pass
        train = ShardStats(ShardedSplit.of(args.prepared, "train"))
    else:
        train = read_splits(args.prepared, ("train",))["train"]

    # Build and save
    model = models.build_model(params.model, schema, train)
    summary = models.summary_text(model)
    log.info("built %s with %d parameters", model.name, model.count_params())
    with files.atomic_paths(args.model, args.summary, folders=[args.model]) as (folder, text):
        models.save_model_folder(model, folder)
        text.write_text(summary)


if __name__ == "__main__":
    stage.run(main)
