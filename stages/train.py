"""Train: fit the built model with checkpointing, early stopping, TensorBoard and DVCLive.

The model's preprocessing part was learned in `build` and stays fixed: it turns each split
into a feature matrix (one per path for Wide & Deep) once, and only the network behind it is
trained. A network with several outputs gets the labels at each, and `train.loss_weights`.

A loss that becomes NaN or infinite fails the stage (exit 2) and saves no model.

Reads:  <prepared>/{train,valid}.parquet, <prepared>/schema.json, <untrained> (model folder),
        <learning rate> (the lr_find stage's record: the suggestion under `auto`, else a check).
Writes: <model> (model folder of the best epoch), <metrics> (epochs run, best epoch, best
        validation value, seconds), per-epoch curves under <dvclive>, TensorBoard logs under
        <tensorboard>/<experiment name or "workspace">. While it runs, a backup beside <model>
        (`.<name>.backup/`) lets a killed run resume; it is removed when training completes.
Params: seed, train.
"""

import argparse
import logging
import os
import shutil
from pathlib import Path

from mlpipe.params import load_params, resolve_learning_rate
from mlpipe.schema import read_schema, read_splits
from mlpipe.util import files, stage

log = logging.getLogger("mlpipe.train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared", type=Path, help="folder written by the prepare stage")
    parser.add_argument("untrained", type=Path, help="model written by the build stage")
    parser.add_argument("model", type=Path, help="folder to write the trained model into")
    parser.add_argument("metrics", type=Path, help="where to write the training summary JSON")
    parser.add_argument("--dvclive", type=Path, required=True, help="DVCLive folder")
    parser.add_argument("--tensorboard", type=Path, required=True, help="TensorBoard root")
    parser.add_argument(
        "--learning-rate", type=Path, required=True, help="the lr_find stage's record"
    )
    args = parser.parse_args()
    # From here on the rate is a number, `auto` or not; the resume fingerprint hashes it too.
    params = resolve_learning_rate(load_params(), args.learning_rate)

    from mlpipe import features
    from mlpipe.modeling import models
    from mlpipe.training import callbacks, loop
    from mlpipe.util import runtime

    runtime.set_op_threads(runtime.op_threads(params.train.op_threads, params.train.batch_size))

    # Model, and the checks of params against it that Keras would only fail on mid-fit
    schema = read_schema(args.prepared)
    runtime.seed_everything(params.seed)
    preprocessor, model = models.split_model(models.load_model_folder(args.untrained))
    outputs = models.output_names(model)
    loop.check_monitor(params.train, schema, outputs)
    loop.check_loss_weights(params.train.loss_weights, outputs)
    loop.check_weighting(params.train, schema, model)

    # Data: features computed once per split, labels fed to every output
    splits = read_splits(args.prepared, ("train", "valid"))
    sample_weight = features.sample_weights(splits["train"], schema)
    xy = features.matrices(preprocessor, splits, schema)
    del splits  # the feature tensors are all training needs from here: free the tables
    class_weight = loop.class_weights(params.train, schema, xy["train"][1])
    steps_per_epoch = loop.steps(len(xy["train"][1]), params.train.batch_size)
    xy = loop.label_outputs(xy, outputs)
    loop.compile_model(model, params.train, schema, steps_per_epoch)

    # Train. The checkpoint and the backup live beside the outputs, where DVC does not delete
    # them before a rerun: an interrupted run resumes, and the model is replaced only on success.
    run_name = os.environ.get("DVC_EXP_NAME") or "workspace"
    dirs = loop.RunDirs(
        checkpoint=args.model.with_name(f".{args.model.name}.checkpoint.weights.h5"),
        tensorboard=args.tensorboard / run_name,
        dvclive=args.dvclive,
        backup=args.model.with_name(f".{args.model.name}.backup"),
    )
    inputs = sorted(p for p in args.untrained.rglob("*") if p.is_file())
    inputs += [args.prepared / f"{name}.parquet" for name in xy]
    fingerprint = loop.fingerprint(params, inputs)
    try:
        summary = loop.fit(
            model, params.train, xy, dirs, params.seed, fingerprint, sample_weight, class_weight
        )
    except callbacks.TrainingDiverged:
        shutil.rmtree(dirs.backup, ignore_errors=True)
        dirs.checkpoint.unlink(missing_ok=True)
        raise
    except KeyboardInterrupt:
        log.warning("rerun to resume from the last completed epoch, kept in %s", dirs.backup)
        raise
    # The best epoch's network behind the unchanged preprocessing: one model from raw columns.
    model.load_weights(dirs.checkpoint)
    models.save_model_folder(models.compose(preprocessor, model), args.model)
    dirs.checkpoint.unlink()
    log.info(
        "best epoch %d of %d: %s=%.4f",
        summary["best_epoch"],
        summary["epochs_run"],
        summary["monitor"],
        summary["best_monitor_value"],
    )
    files.write_json(args.metrics, summary)


if __name__ == "__main__":
    stage.run(main)
