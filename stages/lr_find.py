"""LR find: the learning-rate range test, for `train.optimizer.learning_rate: auto`.

From the untrained model, train for lr_find.steps batches (`epoch`: one pass) while the rate grows
exponentially from lr_find.min_lr to lr_find.max_lr, record the loss after each update, smooth
it, stop once it explodes, and suggest a rate by lr_find.rule. The weights are thrown away.

With a number as the rate the test is skipped and TensorFlow never loaded: the record holds that
number whatever lr_find's params are, so changing them cannot retrain.

Reads:  <prepared>/train.parquet, <prepared>/schema.json, <untrained> (model folder).
Writes: <record> (the rate train uses and its source), <metrics> (the suggestion, the rule, the
        range covered, steps run, loss landmarks), <curve> (rate, loss, smoothed loss per step:
        the data of a DVC plot; only a header when skipped), <png> (the same curve).
Params: seed, lr_find, train.optimizer, train.batch_size, train.loss_weights.
"""

import argparse
import logging
from pathlib import Path

from mlpipe import MlpipeError
from mlpipe.params import load_params
from mlpipe.training import lr_find
from mlpipe.util import files, stage
from mlpipe.util.shards import is_sharded

log = logging.getLogger("mlpipe.lr_find")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared", type=Path, help="folder written by the prepare stage")
    parser.add_argument("untrained", type=Path, help="model written by the build stage")
    parser.add_argument("record", type=Path, help="where to write the rate for training (JSON)")
    parser.add_argument("metrics", type=Path, help="where to write the range test's summary")
    parser.add_argument("curve", type=Path, help="where to write the curve (CSV)")
    parser.add_argument("png", type=Path, help="where to write the curve's picture")
    args = parser.parse_args()
    stage.outputs(args.record, args.metrics, args.curve, args.png)
    params = load_params()
    optimizer = params.train.optimizer

    if optimizer.learning_rate != "auto":
        note = (
            f"Range test skipped: train.optimizer.learning_rate is {optimizer.learning_rate}.\n"
            "Set it to auto to run the test and train at its suggestion."
        )
        log.info(note.replace("\n", " "))
        result, summary = None, {"learning_rate": optimizer.learning_rate, "range_test": False}
        png = lr_find.curve_png(None, summary, note)
    else:
        from mlpipe.modeling import models
        from mlpipe.schema import read_schema, read_splits

        if is_sharded(args.prepared):
            raise MlpipeError(
                "train.optimizer.learning_rate: auto runs the range test on the training split "
                f"in memory; {args.prepared} holds it as shards (data.source is a folder of "
                "Parquet files). Set train.optimizer.learning_rate to a number, e.g. 0.001"
            )
        # Inputs: the training split, and the untrained model (its weights are put back after)
        schema = read_schema(args.prepared)
        frame = read_splits(args.prepared, ("train",))["train"]
        untrained = models.load_model_folder(args.untrained)

        result, summary = lr_find.find_learning_rate(
            untrained,
            params.lr_find,
            frame,
            schema,
            optimizer=optimizer,
            batch_size=params.train.batch_size,
            loss_weights=params.train.loss_weights,
            seed=params.seed,
        )
        png = lr_find.curve_png(result, summary)

    # Write: the record last, so that train never sees a rate without its curve
    record = lr_find.learning_rate_record(optimizer, summary.get("learning_rate"))
    outputs = (args.curve, args.png, args.metrics, args.record)
    with files.atomic_paths(*outputs) as (curve, picture, metrics, rate):
        curve.write_text(lr_find.curve_csv(result))
        picture.write_bytes(png)
        files.write_json(metrics, summary)
        files.write_json(rate, record)


if __name__ == "__main__":
    stage.run(main)
