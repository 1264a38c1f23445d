"""Export: the trained model as `.keras` and TensorFlow SavedModel (and, on request, ONNX and
legacy HDF5), with the metadata serving needs and provenance. Every format takes raw rows.

Reads:  <model> (model folder), <prepared>/schema.json, <prepared>/train.parquet (hashed, and the
        source of the recorded medians and categories), <prepared>/test.parquet (a sample to
        check the ONNX file on); or the shards of those splits, streamed.
Writes: <out>/model.keras (loads with plain Keras), <out>/saved_model/1/ (for TF Serving, with
        named outputs), <out>/model.onnx, <out>/model.h5, <out>/metadata.json (the schema, with
        the training medians and categories, how to read files, library versions, params and
        training-data hashes).
Params: seed, data, model, train (hashed into the metadata), export.
"""

import argparse
import logging
from pathlib import Path

from mlpipe.params import load_params
from mlpipe.schema import read_schema, read_splits, split_path
from mlpipe.util import files, stage
from mlpipe.util.shards import ShardedSplit, is_sharded

log = logging.getLogger("mlpipe.export")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared", type=Path, help="folder written by the prepare stage")
    parser.add_argument("model", type=Path, help="trained model folder")
    parser.add_argument("out", type=Path, help="export folder, replaced whole on success")
    args = parser.parse_args()
    stage.outputs(args.out)
    params = load_params()

    from mlpipe.modeling import models
    from mlpipe.serving import export
    from mlpipe.util import runtime

    schema = read_schema(args.prepared)
    # A loaded Dropout layer draws its random-number state from Python's generator, and the
    # SavedModel stores that state: seeded, the exported bytes repeat.
    runtime.seed_everything(params.seed)
    model = models.load_model_folder(args.model)
    if is_sharded(args.prepared):  # a few rows of test to check a converted format on
        train: Path | ShardedSplit = ShardedSplit.of(args.prepared, "train")
        test = ShardedSplit.of(args.prepared, "test").head(export.CHECK_ROWS)
    else:
        train = split_path(args.prepared, "train")
        test = read_splits(args.prepared, ("test",))["test"]

    with files.atomic_dir(args.out) as folder:
        meta = export.export_model(model, schema, params, train, folder, test)
    log.info("exported %s to %s", ", ".join(meta.formats), args.out)


if __name__ == "__main__":
    stage.run(main)
