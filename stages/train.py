"""Train: fit the built model with checkpointing, early stopping, TensorBoard and DVCLive.

The model's preprocessing part was learned in `build` and stays fixed: it turns each split
into a feature matrix (one per path for Wide & Deep) once, and only the network behind it is
trained. A network with several outputs gets the labels at each, and `train.loss_weights`.

A loss that becomes NaN or infinite fails the stage (exit 2) and replaces no output.

Reads:  <prepared>/{train,valid}.parquet (or their shards, streamed: see
        mlpipe.training.streamed), <prepared>/schema.json, <untrained> (model folder),
        <learning rate> (the lr_find stage's record: the suggestion under `auto`, else a check).
Writes: <model> (model folder of the best epoch), <metrics> (epochs run, best epoch, best
        validation value, seconds), per-epoch curves under <dvclive>, TensorBoard logs under
        <tensorboard>/<experiment name or "workspace">, each replaced whole when training
        succeeds. While it runs, a backup beside <model> and the curves so far beside <dvclive>
        and the TensorBoard run (each `.<name>.backup/`) let a killed run resume; they become
        the outputs, or are removed, when training completes.
Under train.distribute, every worker runs this script (`local_workers`: the chief starts the
others); only the chief writes outputs, curves and logs, and each worker keeps its own backup.

Params: seed, train.
"""

import argparse
import os
from pathlib import Path

from mlpipe.params import load_params
from mlpipe.schema import read_schema, read_splits
from mlpipe.training import lr_find
from mlpipe.util import files, stage
from mlpipe.util.shards import is_sharded, read_sharded, split_input_files

SPLITS = ("train", "valid")


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
    run_name = os.environ.get("DVC_EXP_NAME") or "workspace"
    tensorboard = args.tensorboard / run_name
    params = load_params()
    # The number to train at, `auto` or not; the params stay as written.
    learning_rate = lr_find.read_learning_rate(args.learning_rate, params.train.optimizer)

    from mlpipe.modeling import models
    from mlpipe.training import distribute, fit
    from mlpipe.util import runtime

    # Before TensorFlow starts: thread pools and logical devices are fixed then
    runtime.set_op_threads(runtime.op_threads(params.train.op_threads, params.train.batch_size))
    cluster = distribute.setup(params.train.distribute)
    if cluster.chief:
        stage.outputs(args.model, args.metrics, args.dvclive, tensorboard)

    # Inputs: the untrained model, seeded first (loading draws the seeds of its random layers)
    schema = read_schema(args.prepared)
    runtime.seed_everything(params.seed)
    with cluster.scope():
        untrained = models.load_model_folder(args.untrained)

    # Train. The checkpoint, the backup and the curves so far live beside the outputs, which
    # keep the last successful run's until this one succeeds; an interrupted run resumes.
    dirs = fit.RunDirs(
        checkpoint=args.model.with_name(f".{args.model.name}.checkpoint.weights.h5"),
        tensorboard=backup_of(tensorboard),
        dvclive=backup_of(args.dvclive),
        backup=backup_of(args.model),
    )
    inputs = sorted(p for p in args.untrained.rglob("*") if p.is_file())
    inputs += split_input_files(args.prepared, SPLITS)
    # Shards are read batch by batch; a table is not kept here, so that train frees it once
    # it has its features.
    splits = read_sharded if is_sharded(args.prepared) else read_splits
    with distribute.stopping_workers_on_error(cluster):
        model, summary = fit.train(
            untrained,
            params.train,
            splits(args.prepared, SPLITS),
            schema,
            dirs,
            seed=params.seed,
            learning_rate=learning_rate,
            input_files=inputs,
            cluster=cluster,
        )
        cluster.finish()
    if not cluster.chief:
        return

    # Write, then put every output in place
    outputs = files.atomic_paths(args.model, args.metrics, folders=[args.model])
    with outputs as (folder, metrics_file):
        models.save_model_folder(model, folder)
        files.write_json(metrics_file, summary)
    files.replace_folder(dirs.dvclive, args.dvclive)
    files.replace_folder(dirs.tensorboard, tensorboard)


def backup_of(path: Path) -> Path:
    return path.with_name(f".{path.name}.backup")


if __name__ == "__main__":
    stage.run(main)
