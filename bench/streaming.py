"""Data bigger than memory: the whole pipeline on Parquet shards, and the streamed input path's
training speed against the in-memory one.

1. `peak_rss_gb_<N>_rows_streamed`: N rows x 32 float32 columns (and a binary label) written
   deterministically as Parquet shards in a temporary folder, then prepare, build, lr_find,
   train (one epoch), evaluate and export run as DVC runs them, each in its own process; the
   figure is the largest peak RSS of any stage (each stage's own, from os.wait4), all printed.
2. `streamed_vs_in_memory`: samples/s of one training epoch read from shards through tf.data
   over samples/s of the in-memory path (`features.matrices` + `ShuffledBatches`), same model,
   same batch size, on data that fits (--fit-rows); each path in a fresh process, twice,
   alternately, the fastest of the timed epochs after one of warm-up.

    nice -n 10 python bench/streaming.py                      # 20M rows: ~2.6 GB of numbers
    python bench/streaming.py --rows 200000 --fit-rows 100000  # a quick run
Writes bench/streaming.json (or <--out>/streaming.json): the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = 32
FILE_ROWS = 1_000_000
GEN_ROWS = 250_000  # rows generated at once: 32 MB


def write_shards(folder: Path, rows: int, seed: int = 0) -> None:
    """rows x COLUMNS float32 and a label that depends on two of them, FILE_ROWS per file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = [f"x{i}" for i in range(COLUMNS)]
    for number, start in enumerate(range(0, rows, FILE_ROWS)):
        with pq.ParquetWriter(folder / f"part-{number:05d}.parquet", _schema(names)) as writer:
            for first in range(start, min(start + FILE_ROWS, rows), GEN_ROWS):
                n = min(GEN_ROWS, start + FILE_ROWS - first, rows - first)
                x = rng.standard_normal((n, COLUMNS), dtype=np.float32)
                noise = rng.standard_normal(n, dtype=np.float32)
                label = (x[:, 0] + x[:, 1] + noise > 0).astype(np.int64)
                arrays = [pa.array(x[:, i]) for i in range(COLUMNS)] + [pa.array(label)]
                writer.write_table(pa.Table.from_arrays(arrays, names=[*names, "label"]))


def _schema(names):
    import pyarrow as pa

    return pa.schema([*(pa.field(n, pa.float32()) for n in names), pa.field("label", pa.int64())])


def params(source: str, batch_size: int) -> dict:
    return {
        "seed": 0,
        "data": {"source": source, "target": "label"},
        "train": {"epochs": 1, "batch_size": batch_size},
        "export": {"formats": ["keras"]},
    }


def run_stage(stage: str, args: list[str], cwd: Path) -> tuple[float, float]:
    """(peak RSS in GB, seconds) of one stage run in its own process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "stages" / f"{stage}.py"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    log = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{stage} failed:\n{log.decode()[-3000:]}")
    return usage.ru_maxrss / 1024**2, time.perf_counter() - start  # KiB -> GiB


def pipeline(rows: int, batch_size: int, work: Path) -> dict:
    """Each stage's peak RSS and seconds on `rows` rows in shards."""
    import yaml

    start = time.perf_counter()
    write_shards(work / "raw", rows)
    print(f"wrote {rows} rows in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    (work / "params.yaml").write_text(yaml.safe_dump(params("raw", batch_size)))
    stages = [
        ("prepare", ["prepared", "--raw", "raw"]),
        ("build", ["prepared", "untrained", "summary.txt"]),
        ("lr_find", ["prepared", "untrained", "lr.json", "lr_m.json", "lr.csv", "lr.png"]),
        (
            "train",
            [
                "prepared",
                "untrained",
                "model",
                "train.json",
                "--dvclive",
                "live",
                "--tensorboard",
                "tb",
                "--learning-rate",
                "lr.json",
            ],
        ),
        ("evaluate", ["prepared", "model", "evaluate.json", "details.json", "plots"]),
        ("export", ["prepared", "model", "export"]),
    ]
    out = {}
    for stage, args in stages:
        peak, seconds = run_stage(stage, args, work)
        out[stage] = {"peak_rss_gb": round(peak, 2), "seconds": round(seconds, 1)}
        print(f"{stage}: {out[stage]}", file=sys.stderr)
    out["test_accuracy"] = json.loads((work / "evaluate.json").read_text())["accuracy"]
    return out


def fit_rate(path: str, prepared: Path, batch_size: int, epochs: int) -> float:
    """Samples/s of the fastest training epoch after the first, `path` streamed or in_memory."""
    import keras
    import pandas as pd

    from mlpipe import features
    from mlpipe.modeling import models
    from mlpipe.params import parse_params
    from mlpipe.schema import read_schema
    from mlpipe.stream_stats import ShardStats
    from mlpipe.training import fit
    from mlpipe.training.batches import ShuffledBatches
    from mlpipe.training.streamed import StreamedSplits
    from mlpipe.util import runtime
    from mlpipe.util.shards import ShardedSplit

    cfg = parse_params(params("unused", batch_size) | {"train": {"batch_size": batch_size}})
    runtime.set_op_threads(runtime.op_threads(cfg.train.op_threads, batch_size))
    runtime.seed_everything(0)
    schema = read_schema(prepared)
    splits = {s: ShardedSplit.of(prepared, s) for s in ("train", "valid")}
    model = models.build_model(cfg.model, schema, ShardStats(splits["train"]))
    preprocessor, network = models.split_model(model)
    rows = len(splits["train"])
    fit.compile_model(network, cfg.train, schema, 1e-3, -(-rows // batch_size))
    seconds: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.start)

    if path == "streamed":
        batches = StreamedSplits(preprocessor, splits, schema, ["output"]).batches(
            batch_size, 0, 0, epochs
        )
    else:
        frame = pd.concat(splits["train"].frames(), ignore_index=True)
        x, y = features.matrices(preprocessor, {"train": frame}, schema)["train"]
        del frame
        steps_per_execution = network.steps_per_execution
        batches = ShuffledBatches((x, y), batch_size, 0, 0, epochs, steps_per_execution)
    batches.fit(network, [Timer()])
    return rows / min(seconds[1:])


def speed_ratio(rows: int, batch_size: int, epochs: int, work: Path) -> dict:
    """Both paths' samples/s on the same shards, each in a fresh process."""
    import yaml

    write_shards(work / "raw", rows, seed=1)
    (work / "params.yaml").write_text(yaml.safe_dump(params("raw", batch_size)))
    run_stage("prepare", ["prepared", "--raw", "raw"], work)
    rates: dict[str, float] = {}
    # Each path twice, alternately, the faster run kept: the load of a shared machine varies
    for path in ("in_memory", "streamed") * 2:
        command = [sys.executable, __file__, "--child", path, str(work / "prepared")]
        command += ["--batch-size", str(batch_size), "--epochs", str(epochs)]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        rates[path] = max(rates.get(path, 0.0), float(done.stdout.strip().splitlines()[-1]))
    return {
        "samples_per_s": {k: round(v) for k, v in rates.items()},
        "streamed_vs_in_memory": round(rates["streamed"] / rates["in_memory"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000, help="rows of the pipeline run")
    parser.add_argument("--fit-rows", type=int, default=1_000_000, help="rows of the speed test")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3, help="of the speed test, 1 untimed")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench", help="for streaming.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("prepared", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(fit_rate(args.child, Path(args.prepared), args.batch_size, args.epochs))
        return
    results: dict = {"rows": args.rows, "fit_rows": args.fit_rows, "batch_size": args.batch_size}
    if not args.skip_speed:
        with tempfile.TemporaryDirectory() as tmp:
            results |= speed_ratio(args.fit_rows, args.batch_size, args.epochs, Path(tmp) / "fit")
        print(json.dumps(results), file=sys.stderr)
    if not args.skip_pipeline:
        with tempfile.TemporaryDirectory() as tmp:
            stages = pipeline(args.rows, args.batch_size, Path(tmp) / "pipeline")
        results["stages"] = stages
        peak = max(v["peak_rss_gb"] for v in stages.values() if isinstance(v, dict))
        results[f"peak_rss_gb_{label(args.rows)}_rows_streamed"] = peak
    print(json.dumps(results, indent=2))
    (args.out / "streaming.json").write_text(json.dumps(results, indent=2) + "\n")


def label(rows: int) -> str:
    return f"{rows // 1_000_000}m" if rows % 1_000_000 == 0 else str(rows)


if __name__ == "__main__":
    main()
