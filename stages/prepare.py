"""Prepare: load the dataset, split it and describe it.

Reads:  the dataset named by `data.source`.
Writes: <out>/{train,valid,test}.parquet and <out>/schema.json (features, target, task, classes).
Params: seed, data.
"""

import argparse
import logging

from mlpipe import data, io, stage
from mlpipe.config import load_params

log = logging.getLogger("mlpipe.prepare")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder for the splits and the schema")
    args = parser.parse_args()
    params = load_params()

    # Load
    frame, default_target = data.load_source(params.data.source)
    target, task = data.select_target(frame, params.data, default_target)
    data.check_weight_column(frame, params.data, target)
    log.info("%s: %d rows, target `%s`, task %s", params.data.source, len(frame), target, task)

    # Split
    splits = data.split_frame(frame, target, task, params.data, params.seed)
    schema = data.make_schema(frame, target, task, params.data.weight_column)

    # Write everything or nothing
    with io.atomic_dir(args.out) as tmp:
        for name, part in splits.items():
            part.to_parquet(tmp / f"{name}.parquet", index=False)
            log.info("%s: %d rows", name, len(part))
        io.write_json(tmp / data.SCHEMA_FILE, schema)


if __name__ == "__main__":
    stage.run(main)
