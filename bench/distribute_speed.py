"""Time and accuracy of the train stage on digits: one process against MirroredStrategy over
2 logical CPUs and MultiWorkerMirroredStrategy with 2 local workers (train.distribute).

Each strategy trains the same untrained model (the default params' network) for a fixed
number of epochs (no early stopping), from a fresh stage process; prints the stage's wall
time, the training time it logs, the test accuracy, and each against one process.

    python bench/distribute_speed.py                  # 20 epochs at batch 32
    python bench/distribute_speed.py --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The train params of each setup. Under a strategy Keras runs one batch per call; `none, 1 step`
# shows what that alone costs one process.
SETUPS: dict[str, dict] = {
    "none": {},
    "none, 1 step per call": {"steps_per_execution": 1},
    "mirrored (2 CPUs)": {"distribute": {"strategy": "mirrored", "cpu_devices": 2}},
    "multi_worker (2 local)": {"distribute": {"strategy": "multi_worker", "local_workers": 2}},
}


def prepare(folder: Path, raw: dict) -> None:
    """Digits split and an untrained model, as the prepare and build stages make them."""
    from mlpipe import dataset
    from mlpipe.modeling import models
    from mlpipe.params import parse_params
    from mlpipe.schema import read_splits, write_prepared
    from mlpipe.training import lr_find
    from mlpipe.util import runtime

    params = parse_params(raw)
    frame, target = dataset.load_source(params.data)
    write_prepared(folder / "prepared", *dataset.prepare(frame, target, params.data, params.seed))
    runtime.seed_everything(params.seed)
    splits, schema = read_splits(folder / "prepared"), dataset_schema(folder)
    built = models.build_model(params.model, schema, splits["train"])
    models.save_model_folder(built, folder / "untrained")
    record = lr_find.learning_rate_record(params.train.optimizer, None)
    (folder / "rate.json").write_text(json.dumps(record))


def dataset_schema(folder: Path):
    from mlpipe.schema import read_schema

    return read_schema(folder / "prepared")


def test_accuracy(folder: Path) -> float:
    from mlpipe import features
    from mlpipe.modeling import models
    from mlpipe.schema import read_splits

    model = models.load_model_folder(folder / "model")
    preprocessor, network = models.split_model(model)
    splits = read_splits(folder / "prepared", ("test",))
    x, y = features.matrices(preprocessor, splits, dataset_schema(folder))["test"]
    return float((network.predict(x, verbose=0).argmax(axis=1) == y).mean())


def train(folder: Path, raw: dict, setup: dict) -> tuple[float, float]:
    """(wall seconds of the stage, training seconds it logs)."""
    raw = {**raw, "train": {**raw["train"], **setup}}
    (folder / "params.yaml").write_text(json.dumps(raw))
    for name in ("model", "train.json"):
        subprocess.run(["rm", "-rf", str(folder / name)], check=True)
    args = ["prepared", "untrained", "model", "train.json", "--dvclive", "live"]
    args += ["--tensorboard", "tb", "--learning-rate", "rate.json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "train.py"), *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"train failed under {setup}:\n{result.stderr[-3000:]}")
    trained = float(re.findall(r"trained in ([0-9.]+) s", result.stderr)[0])
    return wall, trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    raw = {
        "train": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "early_stopping": {"patience": args.epochs},
        }
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepare(folder, raw)
        rows = []
        for name, setup in SETUPS.items():
            wall, trained = train(folder, raw, setup)
            rows.append((name, wall, trained, test_accuracy(folder)))
    base = rows[0]
    print(f"digits, {args.epochs} epochs at batch {args.batch_size}, {os.cpu_count()} cores")
    print(f"{'strategy':24} {'stage s':>8} {'train s':>8} {'x none':>7} {'test acc':>9}")
    for name, wall, trained, accuracy in rows:
        print(
            f"{name:24} {wall:8.1f} {trained:8.1f} {trained / base[2]:7.2f} {accuracy:9.4f}"
            f"  ({accuracy - base[3]:+.4f})"
        )


if __name__ == "__main__":
    main()
