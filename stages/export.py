"""Export: the trained model as `.keras` and TensorFlow SavedModel (and, on request, ONNX and
legacy HDF5), with the metadata serving needs and provenance. Every format takes raw rows.

Reads:  <model> (model folder), <prepared>/schema.json, <prepared>/train.parquet (hashed, and the
        source of the recorded medians and categories), <prepared>/test.parquet (a sample to
        check the ONNX file on).
Writes: <out>/model.keras, <out>/saved_model/, <out>/model.onnx, <out>/model.h5,
        <out>/metadata.json (feature schema, classes, how to read files, library versions,
        git commit, params and training-data hashes).
Params: seed, data, model, train (hashed into the metadata), export.
"""

import argparse
import logging
from pathlib import Path

from mlpipe import data, io, stage
from mlpipe.config import load_params

log = logging.getLogger("mlpipe.export")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared", type=Path, help="folder written by the prepare stage")
    parser.add_argument("model", type=Path, help="trained model folder")
    parser.add_argument("out", type=Path, help="export folder, replaced whole on success")
    args = parser.parse_args()
    params = load_params()

    from mlpipe import export, models

    schema = data.read_schema(args.prepared)
    model = models.load_model_folder(args.model)
    info = export.metadata(schema, params, args.prepared / "train.parquet", model)
    test = data.read_splits(args.prepared, ("test",))["test"]
    sample = data.model_inputs(test.head(256), schema)  # to check converted formats on

    with io.atomic_dir(args.out) as tmp:
        export.write_formats(model, params.export, tmp, sample)
        io.write_json(tmp / export.METADATA_FILE, info)
    log.info("exported %s to %s", ", ".join(info["formats"]), args.out)


if __name__ == "__main__":
    stage.run(main)
