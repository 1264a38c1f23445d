"""Prepare: load the dataset, check it, split it and describe it.

Reads:  the dataset named by `data.source` (and `data.test_source`); optionally the metadata of
        the currently exported model, only to warn when the features changed.
Writes: <out>/{train,valid,test}.parquet and <out>/schema.json (the `Schema`: features and
        their kinds, target, task, classes, warnings); for a folder or glob of Parquet files,
        <out>/{train,valid,test}/part-*.parquet instead, written batch by batch. Nothing is
        written unless every check passes.
Params: seed, data.
"""

import argparse
import logging
from pathlib import Path

from mlpipe import MlpipeError, dataset
from mlpipe.params import load_params
from mlpipe.schema import write_prepared, write_record
from mlpipe.serving.metadata import read_metadata
from mlpipe.util import files, stage
from mlpipe.util.paths import SCHEMA_FILE
from mlpipe.util.shards import is_sharded_source

log = logging.getLogger("mlpipe.prepare")


def prepare_sharded(out: Path, params) -> None:
    """A folder or glob of Parquet files: checked, split and written batch by batch."""
    from mlpipe.dataset_stream import prepare_sharded as split_into_shards

    with files.atomic_dir(out) as tmp:
        schema, sizes = split_into_shards(params.data, params.seed, tmp)
        log.info(
            "%s: %d rows, %d features",
            params.data.source,
            sum(sizes.values()),
            len(schema.features),
        )
        for name, rows in sizes.items():
            log.info("%s: %d rows", name, rows)
        write_record(tmp / SCHEMA_FILE, schema)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the splits and the schema")
    parser.add_argument(
        "--raw", type=Path, help="folder of data files that DVC watches for changes"
    )
    parser.add_argument(
        "--previous", type=Path, help="metadata.json of the exported model, to compare features"
    )
    args = parser.parse_args()
    stage.outputs(args.out)
    params = load_params()

    if is_sharded_source(params.data.source):
        prepare_sharded(args.out, params)
        return

    # Load and check
    frame, default_target = dataset.load_source(params.data)
    test = dataset.load_test_source(params.data)
    user_files = [s for s in (params.data.source, params.data.test_source) if s and ":" not in s]
    for source in user_files:
        if args.raw and not Path(source).resolve().is_relative_to(args.raw.resolve()):
            log.warning(
                "%s is outside %s/: DVC will not rerun the pipeline when it changes",
                source,
                args.raw,
            )

    # Check and split; then say what looks wrong without refusing it
    splits, schema = dataset.prepare(frame, default_target, params.data, params.seed, test)
    log.info("%s: %d rows, %d features", params.data.source, len(frame), len(schema.features))
    warnings = dataset.data_warnings(splits, schema)
    if args.previous and args.previous.is_file():
        try:
            changes = schema.changes_from(read_metadata(args.previous))
        except MlpipeError as err:
            changes = []
            log.warning("features not compared with the exported model's: %s", err)
        if changes:
            warnings.append(
                "the data differs from what the current model was trained on: " + "; ".join(changes)
            )
    for warning in warnings:
        log.warning("%s", warning)

    # Write everything or nothing
    for name, part in splits.items():
        log.info("%s: %d rows", name, len(part))
    with files.atomic_dir(args.out) as tmp:
        write_prepared(tmp, splits, schema.model_copy(update={"warnings": tuple(warnings)}))


if __name__ == "__main__":
    stage.run(main)
