"""Rows per second of the CSV reader `mlpipe predict` uses, on a file it writes itself.

Writes ROWS x COLUMNS random float32 numbers (with a few missing-value markers and padded
cells, as users' files have) to a temporary CSV, then times `tables.iter_table` over it in
chunks of 100,000 rows, and the conversion of every chunk to the float32 arrays a model takes
(`tables.to_numeric`): the reading part of `mlpipe predict`, without the model.

    python bench/read_speed.py                      # 1,000,000 x 64
    python bench/read_speed.py --rows 100000        # quicker
"""

from __future__ import annotations

import argparse
import inspect
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from mlpipe.params import CsvParams
from mlpipe.util import tables


def write_csv(path: Path, rows: int, columns: int, seed: int = 0) -> None:
    """Random numbers; in the first column every 97th cell is `NA` and every 89th padded."""
    rng = np.random.default_rng(seed)
    names = [f"x{i}" for i in range(columns)]
    schema = pa.schema([(names[0], pa.string())] + [(n, pa.float32()) for n in names[1:]])
    with pa_csv.CSVWriter(path, schema) as writer:
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            block = rng.normal(size=(n, columns)).astype(np.float32)
            first = np.asarray(pc.cast(pa.array(block[:, 0]), pa.string()).to_pylist(), object)
            first[np.arange(n) % 97 == 0] = "NA"
            first[np.arange(n) % 89 == 0] = " 1.5 "
            cells = [pa.array(first.tolist(), pa.string())]
            cells += [pa.array(block[:, i]) for i in range(1, columns)]
            writer.write_table(pa.table(dict(zip(names, cells, strict=True)), schema=schema))


def read(path: Path, columns: int, chunk_rows: int) -> int:
    """Read the file as `mlpipe predict` does; return the rows read."""
    names = [f"x{i}" for i in range(columns)]
    options = {}
    if "numeric" in inspect.signature(tables.iter_table).parameters:
        options["numeric"] = names
    rows = 0
    for chunk in tables.iter_table(path, CsvParams(), chunk_rows, **options):
        for name in names:
            tables.to_numeric(chunk[name], str(path), rows + 1)
        rows += len(chunk)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--columns", type=int, default=64)
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rows.csv"
        start = time.perf_counter()
        write_csv(path, args.rows, args.columns)
        size = path.stat().st_size / 2**20
        print(
            f"wrote {args.rows} x {args.columns} ({size:.0f} MiB) in "
            f"{time.perf_counter() - start:.1f} s"
        )
        start, cpu = time.perf_counter(), time.process_time()
        rows = read(path, args.columns, args.chunk_rows)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert rows == args.rows, rows
    # CPU seconds (all threads) say what the reader costs on a machine busy with other work.
    print(
        f"read {rows} rows in {seconds:.2f} s ({cpu:.2f} CPU s): {rows / seconds:,.0f} rows/s, "
        f"{rows / cpu:,.0f} rows per CPU second"
    )


if __name__ == "__main__":
    main()
