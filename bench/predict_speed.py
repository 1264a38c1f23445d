"""`mlpipe predict` throughput on 1,000,000 rows x 64 numeric columns (CSV), end to end and
without the reading: the default (300, 100) MLP on the digits' 64 columns, briefly trained.

    python bench/predict_speed.py [--rows 1000000] [--folder /tmp/mlpipe-predict-bench]

Prints rows/s for: the whole command's work (`predict.run`: read, check, type, infer, write),
and the part after reading (parsed frames in memory to the written CSV), split into typing
and inference, and writing.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

from export_fixture import export_digits_model, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--folder", type=Path, default=None)
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="mlpipe-predict-bench-"))
    folder.mkdir(parents=True, exist_ok=True)

    from mlpipe.serving import predict

    export, names = export_digits_model(folder)
    csv = folder / "rows.csv"
    if not csv.exists():
        rows(names, args.rows).to_csv(csv, index=False)
    size = csv.stat().st_size / 1e6
    print(f"input: {csv} ({args.rows:,} rows x {len(names)} columns, {size:.0f} MB)")

    start = time.perf_counter()
    n = predict.run(export, csv, folder / "out.csv")
    whole = time.perf_counter() - start
    print(f"predict.run, end to end: {n / whole:,.0f} rows/s ({whole:.1f} s)")

    model, meta = predict.load(export)
    predictor = predict.Predictor(model, meta)
    start = time.perf_counter()
    chunks = list(predict.Rows(csv, predict.csv_params(meta), predict.CHUNK_ROWS))
    reading = time.perf_counter() - start
    print(f"  reading alone (util.tables): {n / reading:,.0f} rows/s ({reading:.1f} s)")
    infer = write = 0.0
    sink = io.BytesIO()
    cpu = time.process_time()
    for i, chunk in enumerate(chunks):
        t0 = time.perf_counter()
        frame = predictor.frame(chunk, str(csv))
        t1 = time.perf_counter()
        predict.write_csv(frame, sink, header=i == 0)
        t2 = time.perf_counter()
        infer, write = infer + t1 - t0, write + t2 - t1
    cpu = time.process_time() - cpu
    print(
        f"  after reading (typing, inference, writing): {n / (infer + write):,.0f} rows/s "
        f"({infer + write:.1f} s: typing and inference {infer:.1f} s, writing {write:.1f} s, "
        f"{sink.tell() / 1e6:.0f} MB of CSV); {cpu:.1f} CPU-seconds over {os.cpu_count()} "
        f"cores, {os.getloadavg()[0]:.1f} runnable processes on average"
    )


if __name__ == "__main__":
    main()
