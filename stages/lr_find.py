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

from mlpipe.params import learning_rate_record, load_params
from mlpipe.schema import read_schema, read_splits
from mlpipe.training import lr_find
from mlpipe.util import files, stage

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
    params = load_params()
    optimizer = params.train.optimizer
    cfg = params.lr_find

    if optimizer.learning_rate != "auto":
        note = (
            f"Range test skipped: train.optimizer.learning_rate is {optimizer.learning_rate}.\n"
            "Set it to auto to run the test and train at its suggestion."
        )
        log.info(note.replace("\n", " "))
        result, summary = None, {"learning_rate": optimizer.learning_rate, "range_test": False}
        png = lr_find.curve_png(None, summary, note)
    else:
        from mlpipe import features
        from mlpipe.modeling import models
        from mlpipe.training import loop
        from mlpipe.util import runtime

        # Data: the training split, as train sees it
        schema = read_schema(args.prepared)
        frame = read_splits(args.prepared, ("train",))["train"]
        preprocessor, model = models.split_model(models.load_model_folder(args.untrained))
        outputs = models.output_names(model)
        loop.check_loss_weights(params.train.loss_weights, outputs)
        x = features.to_numpy(features.transform(preprocessor, frame, schema))
        y = features.encode_target(frame[schema.target], schema)
        x, y = loop.label_outputs({"train": (x, y)}, outputs)["train"]
        loss, loss_weights = loop.output_losses(params.train.loss_weights, schema, outputs)

        # The range test, on a copy of the untrained MLP that is then thrown away
        runtime.seed_everything(params.seed)
        batch_size = params.train.batch_size
        steps = lr_find.epoch_steps(len(frame), batch_size) if cfg.steps == "epoch" else cfg.steps
        result = lr_find.range_test(
            model,
            x,
            y,
            optimizer=loop.build_optimizer(optimizer, cfg.min_lr),
            loss=loss,
            loss_weights=loss_weights,
            min_lr=cfg.min_lr,
            max_lr=cfg.max_lr,
            steps=steps,
            batch_size=batch_size,
            seed=params.seed,
            smoothing=cfg.smoothing,
            stop_factor=cfg.stop_factor,
        )
        summary = {**lr_find.summarize(result, cfg.rule), "range_test": True}
        log.info("suggested learning rate %g (%s)", summary["learning_rate"], summary["rule"])
        png = lr_find.curve_png(result, summary)

    # Write: the record last, so that train never sees a rate without its curve
    files.write_text(args.curve, lr_find.curve_csv(result))
    files.write_bytes(args.png, png)
    files.write_json(args.metrics, summary)
    files.write_json(args.record, learning_rate_record(optimizer, summary.get("learning_rate")))


if __name__ == "__main__":
    stage.run(main)
