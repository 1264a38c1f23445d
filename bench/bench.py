"""Training throughput of mlpipe's input path against plain Keras and scikit-learn, in one run.

Measures samples per second of one epoch after warm-up on synthetic data (rows x 64 float32
features, 10 classes) with a (300, 100) MLP, for:
  (a) mlpipe: the model from `models.build_model`, compiled by `fit.compile_model`
      (steps_per_execution auto), fed by `batches.ShuffledBatches`, with TensorFlow's threads
      set by `train.op_threads: auto` as the train stage sets them;
  (b) plain Keras: the same layers without preprocessing, `model.fit(numpy_x, numpy_y)`, with
      TensorFlow's default settings;
  (c) scikit-learn's MLPClassifier((300, 100)) with the same batch size (partial_fit).
TensorFlow fixes its thread pools at its first op, so (a) and (b) each run in a fresh child
process, one after the other; an epoch's rate is that of the fastest of five timed epochs
after one of warm-up, inside one `fit` (so fit's start-up and tear-down are not counted). Also: on
digits, the validation accuracy after equal epochs of mlpipe's path and of `fit` on arrays;
NumPy's float32 matrix-multiply rate; the wall time of the DVC pipeline (no-op and forced, in a
temporary clone) against one plain script doing the same work; and the peak memory of
training on 2M rows. Writes bench/results.json and bench/results.md.

    python bench/bench.py            # full sizes, a few minutes
    python bench/bench.py --quick    # tiny sizes, to check that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mlpipe.schema import Schema

ROOT = Path(__file__).resolve().parents[1]
FEATURES, CLASSES, HIDDEN = 64, 10, (300, 100)
BATCHES = (32, 256, 2048)
DIGITS_EPOCHS, DIGITS_SEEDS = 20, (0, 1, 2)


def synthetic(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, FEATURES), dtype=np.float32)
    y = (x[:, :CLASSES] + 0.5 * rng.standard_normal((rows, CLASSES), dtype=np.float32)).argmax(1)
    return x, y


def schema() -> Schema:
    from mlpipe.schema import Feature, Schema

    features = [Feature(name=f"x{i}", input=f"x{i}", kind="numeric") for i in range(FEATURES)]
    return Schema(
        features=features,
        target="y",
        task="classification",
        classes=list(range(CLASSES)),
        weight_column=None,
    )


def best_rate(seconds: list[float], rows: int) -> float:
    """Samples per second of the fastest timed epoch; the first epoch (tracing) is not timed.

    The fastest, as timeit takes the minimum: on these shared machines an epoch is now and
    then slowed by half for seconds at a time, by load outside the process.
    """
    return rows / min(seconds[1:])


def epoch_timer(seconds: list[float]):
    """A Keras callback appending each epoch's wall time to `seconds`."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.start)

    return EpochTimer()


def mlpipe_params(batch_size: int):
    from mlpipe.params import parse_params

    return parse_params(
        {"model": {"hidden_units": list(HIDDEN)}, "train": {"batch_size": batch_size}}
    )


def mlpipe_core(params, frame, schema: Schema, seed: int):
    """The MLP behind the preprocessing, and the preprocessing, as build and train make them."""
    from mlpipe.modeling import models
    from mlpipe.util import runtime

    runtime.seed_everything(seed)
    return models.split_model(models.build_model(params.model, schema, frame))


def mlpipe_fit(model, params, schema: Schema, x, y, epochs: int, callbacks=()) -> None:
    """Train as the train stage does (compile_model, then fit on ShuffledBatches), without the
    checkpoint, backup and loggers, whose cost is not the input path's."""
    from mlpipe.training import batches, fit

    batch_size = params.train.batch_size
    rate = params.train.optimizer.learning_rate
    fit.compile_model(model, params.train, schema, rate, batches.steps(len(y), batch_size))
    shuffled = batches.ShuffledBatches((x, y), batch_size, 0, 0, epochs, model.steps_per_execution)
    shuffled.fit(model, callbacks)


def mlpipe_rates(rows: int, batches: list[int], epochs: int) -> dict:
    """(a), in a process whose TensorFlow threads follow train.op_threads: auto."""
    import pandas as pd

    from mlpipe import features
    from mlpipe.util import runtime

    runtime.set_op_threads(runtime.op_threads("auto", batches[0]))
    x, y = synthetic(rows)
    frame = pd.DataFrame(x, columns=schema().feature_names, copy=False)
    rates = {}
    for batch in batches:
        params = mlpipe_params(batch)
        preprocessor, model = mlpipe_core(params, frame, schema(), seed=0)
        x_features = features.transform(preprocessor, frame, schema())
        seconds: list[float] = []
        mlpipe_fit(model, params, schema(), x_features, y, epochs, [epoch_timer(seconds)])
        rates[batch] = best_rate(seconds, rows)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    return {"rates": rates, "trainable_params": trainable}


def keras_rates(rows: int, batches: list[int], epochs: int) -> dict:
    """(b): plain Keras, default settings."""
    import keras

    x, y = synthetic(rows)
    rates = {}
    for batch in batches:
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((FEATURES,))]
            + [keras.layers.Dense(u, activation="relu") for u in HIDDEN]
            + [keras.layers.Dense(CLASSES, activation="softmax")]
        )
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        seconds: list[float] = []
        model.fit(
            x, y, batch_size=batch, epochs=epochs, verbose=0, callbacks=[epoch_timer(seconds)]
        )
        rates[batch] = best_rate(seconds, rows)
    return {"rates": rates}


def sklearn_rate(x, y, batch_size: int, epochs: int) -> float:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    model = MLPClassifier(hidden_layer_sizes=HIDDEN, batch_size=batch_size, random_state=0)
    seconds = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(epochs):
            start = time.perf_counter()
            model.partial_fit(x, y, classes=np.arange(CLASSES))
            seconds.append(time.perf_counter() - start)
    return best_rate(seconds, len(y))


def digits_accuracy(epochs: int, seeds: list[int]) -> dict:
    """Validation accuracy on digits after `epochs` epochs at batch 32, per seed: the same
    network and features, fed by mlpipe's path and by `fit` on arrays (shuffle=True)."""
    from mlpipe import dataset, features
    from mlpipe.util import runtime

    params = mlpipe_params(32)
    runtime.set_op_threads(runtime.op_threads("auto", 32))
    frame, default_target = dataset.load_source(params.data)
    splits, digits = dataset.prepare(frame, default_target, params.data, params.seed)
    scores: dict[str, list[float]] = {"mlpipe": [], "keras_fit": []}
    for seed in seeds:
        for path in scores:
            preprocessor, model = mlpipe_core(params, splits["train"], digits, seed)
            xy = features.matrices(preprocessor, splits, digits)
            (x, y), valid = xy["train"], xy["valid"]
            if path == "mlpipe":
                mlpipe_fit(model, params, digits, x, y, epochs)
            else:
                from mlpipe.training import batches, fit

                rate = params.train.optimizer.learning_rate
                fit.compile_model(model, params.train, digits, rate, batches.steps(len(y), 32))
                model.fit(np.asarray(x), y, batch_size=32, epochs=epochs, verbose=0)
            logs = model.evaluate(np.asarray(valid[0]), valid[1], verbose=0, return_dict=True)
            scores[path].append(round(float(logs["accuracy"]), 4))
    return scores


def child(command: list[str]) -> dict:
    """Run this script with `command` in a fresh process; its last stdout line is JSON."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, __file__, *command], check=True, capture_output=True, text=True, env=env
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def sgemm_gflops(n: int) -> float:
    a = np.ones((n, n), dtype=np.float32)
    a @ a
    start = time.perf_counter()
    repeats = 5
    for _ in range(repeats):
        a @ a
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def timed(command: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def pipeline_seconds() -> dict:
    """`dvc repro --force` and a no-op `dvc repro` in a clone, and the plain script."""
    venv_bin = str(Path(sys.executable).parent)
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "repo"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        env = {
            **os.environ,
            "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(clone / "src"),
        }
        e2e = timed(["dvc", "repro", "--force"], clone, env)
        noop = min(timed(["dvc", "repro"], clone, env) for _ in range(3))
        plain = timed(
            [sys.executable, str(ROOT / "bench/plain_pipeline.py"), str(clone)], clone, env
        )
    return {
        "e2e_repro_s": round(e2e, 2),
        "noop_repro_s": round(noop, 2),
        "plain_script_s": round(plain, 2),
        "e2e_over_plain": round(e2e / plain, 2),
    }


def peak_rss_gb(rows: int) -> float:
    """Peak resident memory of a fresh process that trains one epoch on `rows` rows."""
    probe = subprocess.run(
        [sys.executable, __file__, "--memory-probe", str(rows)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(probe.stdout.strip().splitlines()[-1])


def memory_probe(rows: int) -> None:
    mlpipe_rates(rows, [2048], epochs=2)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2)  # KiB -> GiB


def markdown(results: dict) -> str:
    from mlpipe.util.markdown import table

    header = ["batch", "mlpipe", "plain Keras fit", "scikit-learn"]
    header += ["mlpipe / Keras", "mlpipe / sklearn"]
    rows = []
    for batch, r in results["samples_per_s"].items():
        sk = f"{r['sklearn']:,.0f}" if r.get("sklearn") else "-"
        sk_ratio = f"{r['mlpipe'] / r['sklearn']:.2f}" if r.get("sklearn") else "-"
        speeds = [f"{r['mlpipe']:,.0f}", f"{r['keras_fit']:,.0f}", sk]
        rows.append([str(batch), *speeds, f"{r['mlpipe'] / r['keras_fit']:.2f}", sk_ratio])
    lines = [table(header, rows), ""]
    lines.append(
        f"Samples per second, {results['rows']:,} rows x {FEATURES} features, "
        f"MLP {HIDDEN}. NumPy sgemm: {results['sgemm_gflops']:.0f} GFLOP/s; mlpipe at "
        f"batch 2048 reaches {results['sgemm_fraction_bs2048']:.2f} of it."
    )
    digits = results["digits_valid_accuracy"]
    lines.append(
        f"Digits, validation accuracy after {digits['epochs']} epochs at batch 32 (seeds "
        f"{', '.join(map(str, digits['seeds']))}): mlpipe's path "
        f"{', '.join(f'{a:.4f}' for a in digits['mlpipe'])}; `fit` on arrays "
        f"{', '.join(f'{a:.4f}' for a in digits['keras_fit'])}."
    )
    for key in ("e2e_repro_s", "noop_repro_s", "plain_script_s", "peak_rss_gb_2m_rows"):
        if results.get(key) is not None:
            lines.append(f"- `{key}`: {results[key]}")
    return "\n".join(lines) + "\n"


def run_child(args) -> dict:
    if args.child == "mlpipe":
        return mlpipe_rates(args.rows, args.batches, args.epochs)
    if args.child == "keras":
        return keras_rates(args.rows, args.batches, args.epochs)
    return digits_accuracy(args.epochs, args.seeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes; skip DVC and memory")
    parser.add_argument("--memory-probe", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=["mlpipe", "keras", "digits"], help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    numbers = lambda v: [int(n) for n in v.split(",")]  # noqa: E731
    parser.add_argument("--batches", type=numbers, help=argparse.SUPPRESS)
    parser.add_argument("--seeds", type=numbers, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench")
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(args.memory_probe)
        return
    if args.child:
        print(json.dumps(run_child(args)))
        return

    rows = 4_000 if args.quick else 200_000
    epochs = 2 if args.quick else 6  # one of warm-up, then the timed ones
    sizes = ["--rows", str(rows), "--epochs", str(epochs)]
    rates: dict[int, dict[str, float]] = {b: {} for b in BATCHES}
    params = 0
    for batch in BATCHES:
        # A process per batch size: op_threads auto depends on it.
        run = child(["--child", "mlpipe", "--batches", str(batch), *sizes])
        rates[batch]["mlpipe"] = run["rates"][str(batch)]
        params = run["trainable_params"]
    keras_run = child(["--child", "keras", "--batches", ",".join(map(str, BATCHES)), *sizes])
    x, y = synthetic(rows)
    for batch in BATCHES:
        rates[batch]["keras_fit"] = keras_run["rates"][str(batch)]
        if batch != 2048:
            rates[batch]["sklearn"] = sklearn_rate(x, y, batch, epochs)
        print(batch, {k: round(v) for k, v in rates[batch].items()}, flush=True)
    seeds = DIGITS_SEEDS[:1] if args.quick else DIGITS_SEEDS
    digits_epochs = 2 if args.quick else DIGITS_EPOCHS
    seed_list = ",".join(map(str, seeds))
    digits = child(["--child", "digits", "--epochs", str(digits_epochs), "--seeds", seed_list])
    gflops = sgemm_gflops(512 if args.quick else 4096)
    results = {
        "rows": rows,
        "trainable_params": params,
        "samples_per_s": {str(b): {k: round(v, 1) for k, v in r.items()} for b, r in rates.items()},
        "mlpipe_samples_per_s": round(rates[32]["mlpipe"], 1),
        "keras_fit_samples_per_s": round(rates[32]["keras_fit"], 1),
        "sklearn_samples_per_s": round(rates[32]["sklearn"], 1),
        "ratio_vs_keras_fit": round(rates[32]["mlpipe"] / rates[32]["keras_fit"], 3),
        "ratio_vs_sklearn": round(rates[32]["mlpipe"] / rates[32]["sklearn"], 3),
        "sgemm_gflops": round(gflops, 1),
        "sgemm_fraction_bs2048": round(6 * params * rates[2048]["mlpipe"] / 1e9 / gflops, 3),
        "digits_valid_accuracy": {"epochs": digits_epochs, "seeds": list(seeds), **digits},
        "noop_repro_s": None,
        "e2e_repro_s": None,
        "plain_script_s": None,
        "e2e_over_plain": None,
        "peak_rss_gb_2m_rows": None,
    }
    if not args.quick:
        results.update(pipeline_seconds())
        results["peak_rss_gb_2m_rows"] = round(peak_rss_gb(2_000_000), 2)
    from mlpipe.util import files

    files.write_text(args.out / "results.json", json.dumps(results, indent=2) + "\n")
    files.write_text(args.out / "results.md", markdown(results))
    print(markdown(results))
    if args.out == ROOT / "bench":
        from mlpipe.tools.readme import fill_include

        readme = ROOT / "README.md"
        files.write_text(
            readme, fill_include(readme.read_text(), "bench/results.md", markdown(results))
        )


if __name__ == "__main__":
    main()
