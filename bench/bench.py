"""Training throughput of mlpipe's input path against plain Keras and scikit-learn, and the
pipeline's overhead against one plain script: every ratio the median of paired runs.

Measures samples per second of an epoch after warm-up on synthetic data (rows x 64 float32
features, 10 classes) with a (300, 100) MLP, for:
  (a) mlpipe: the model from `models.build_model`, compiled by `fit.compile_model`
      (steps_per_execution auto), fed by `batches.ShuffledBatches`, with TensorFlow's threads
      set by `train.op_threads: auto` as the train stage sets them;
  (b) plain Keras: the same layers without preprocessing, `model.fit(numpy_x, numpy_y)`, with
      TensorFlow's default settings;
  (c) scikit-learn's MLPClassifier((300, 100)) with the same batch size (partial_fit).
TensorFlow fixes its thread pools at its first op, so (a) and (b) run in fresh child
processes. One paired run measures (a), (b), (c) and NumPy's float32 matrix-multiply rate, the
order of (a) and (b) alternating between pairs; a setup's rate in a run is its faster timed
epoch inside one `fit` (fit's start-up and tear-down are not counted). Each ratio is computed
per pair and reported as the median over the pairs (default 5) with its range, so a burst of
load outside the process moves one pair, not the figure. At batch 2048 a pair also measures
(a) with train.precision mixed_bfloat16, and the rate the network's matrix products alone
would allow, timed in NumPy. Also: on digits, the validation accuracy after equal epochs of
mlpipe's path and of `fit` on arrays; the peak memory of training on 2M rows.

With --pipeline: the wall time of `dvc repro --force` of the default pipeline in a temporary
clone against one plain script doing the same work (`bench/plain_pipeline.py`), paired the
same way, and a no-op `dvc repro`. Writes bench/results.json and bench/results.md, each run
keeping the other's figures.

    python bench/bench.py              # the training figures, 5 pairs: `make bench`
    python bench/bench.py --pipeline   # the pipeline's figures, 5 pairs: `make bench-pipeline`
    python bench/bench.py --quick      # tiny sizes, 2 pairs: to check that it runs
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
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
SKLEARN_BATCHES = (32, 256)
SETUPS = ("mlpipe", "keras_fit", "sklearn")
PIPELINE_FIGURES = ("e2e_repro_s", "plain_script_s", "e2e_over_plain", "noop_repro_s")
BF16 = "mixed_bfloat16"  # train.precision, measured at batch 2048
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


def mlpipe_params(batch_size: int, precision: str = "float32"):
    from mlpipe.params import parse_params

    train = {"batch_size": batch_size, "precision": precision}
    return parse_params({"model": {"hidden_units": list(HIDDEN)}, "train": train})


def rows_at(batch: int, rows: int) -> int:
    """Rows of an epoch at `batch`: 800 batches at most, so small batches, the slowest to
    run through, take seconds too."""
    return min(rows, 800 * batch)


def mlpipe_core(params, frame, schema: Schema, seed: int):
    """The MLP behind the preprocessing, and the preprocessing, as build and train make them."""
    from mlpipe.modeling import models
    from mlpipe.util import runtime

    runtime.seed_everything(seed)
    return models.split_model(models.build_model(params.model, schema, frame))


def mlpipe_fit(model, params, schema: Schema, x, y, epochs: int, callbacks=()) -> None:
    """Train as the train stage does (compile_model, then fit on ShuffledBatches), without the
    checkpoint, backup and loggers, whose cost is not the input path's."""
    from mlpipe.training import batches, fit, precision

    batch_size = params.train.batch_size
    rate = params.train.optimizer.learning_rate
    with precision.computing_in(model, params.train.precision):
        fit.compile_model(model, params.train, schema, rate, batches.steps(len(y), batch_size))
        shuffled = batches.ShuffledBatches(
            (x, y), batch_size, 0, 0, epochs, model.steps_per_execution
        )
        shuffled.fit(model, callbacks)


def mlpipe_rates(
    rows: int, batches: list[int], epochs: int, precision: str = "float32", cap: bool = True
) -> dict:
    """(a), in a process whose TensorFlow threads follow train.op_threads: auto; the network
    trains in train.precision `precision`; epochs of `rows_at` rows, or all `rows` without
    `cap`."""
    import pandas as pd

    from mlpipe import features
    from mlpipe.util import runtime

    runtime.set_op_threads(runtime.op_threads("auto", batches[0]))
    x, y = synthetic(rows)
    frame = pd.DataFrame(x, columns=schema().feature_names, copy=False)
    rates = {}
    for batch in batches:
        params = mlpipe_params(batch, precision)
        preprocessor, model = mlpipe_core(params, frame, schema(), seed=0)
        n = rows_at(batch, rows) if cap else rows
        x_features = features.transform(preprocessor, frame.iloc[:n], schema())
        seconds: list[float] = []
        mlpipe_fit(model, params, schema(), x_features, y[:n], epochs, [epoch_timer(seconds)])
        rates[batch] = best_rate(seconds, n)
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
        n = rows_at(batch, rows)
        model.fit(
            x[:n],
            y[:n],
            batch_size=batch,
            epochs=epochs,
            verbose=0,
            callbacks=[epoch_timer(seconds)],
        )
        rates[batch] = best_rate(seconds, n)
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


def gemm_bound(batch: int, repeats: int = 20) -> float:
    """Samples per second of a training step of the network at `batch` if it cost only its
    matrix products, timed in NumPy: each layer's forward product and weight gradient, and the
    input gradient of every layer but the first."""
    sizes = (FEATURES, *HIDDEN, CLASSES)
    rng = np.random.default_rng(0)
    acts = [rng.standard_normal((batch, n), dtype=np.float32) for n in sizes]
    kernels = [rng.standard_normal(shape, dtype=np.float32) for shape in itertools.pairwise(sizes)]

    def step() -> None:
        for i, kernel in enumerate(kernels):
            acts[i] @ kernel
            acts[i].T @ acts[i + 1]
            if i:
                acts[i + 1] @ kernel.T

    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return batch * repeats / (time.perf_counter() - start)


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


def pipeline_pair(clone: Path, env: dict, plain_first: bool) -> dict:
    """One paired run: `dvc repro --force` in the clone and the plain script, in either order."""
    runs = {}
    order = ("plain", "e2e") if plain_first else ("e2e", "plain")
    for which in order:
        if which == "e2e":
            runs[which] = timed(["dvc", "repro", "--force"], clone, env)
        else:
            plain = [sys.executable, str(ROOT / "bench/plain_pipeline.py"), str(clone)]
            runs[which] = timed(plain, clone, env)
    return runs


def pipeline_seconds(pairs: int) -> dict:
    """`dvc repro --force` of the default pipeline in a clone against the plain script, over
    `pairs` paired runs (alternating which goes first), and a no-op `dvc repro`."""
    venv_bin = str(Path(sys.executable).parent)
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "repo"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        env = {
            **os.environ,
            "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(clone / "src"),
        }
        runs = []
        for i in range(pairs):
            runs.append(pipeline_pair(clone, env, plain_first=i % 2 == 1))
            print("pipeline", {k: round(v, 1) for k, v in runs[-1].items()}, flush=True)
        noop = min(timed(["dvc", "repro"], clone, env) for _ in range(3))
    return {
        "e2e_repro_s": spread([r["e2e"] for r in runs], digits=2),
        "plain_script_s": spread([r["plain"] for r in runs], digits=2),
        "e2e_over_plain": spread([r["e2e"] / r["plain"] for r in runs]),
        "noop_repro_s": round(noop, 2),
    }


def spread(values: list[float], digits: int = 3) -> dict:
    """The median of paired runs' figures, their range, and the figures themselves."""
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), digits),
        "min": round(ordered[0], digits),
        "max": round(ordered[-1], digits),
        "runs": [round(v, digits) for v in values],
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
    mlpipe_rates(rows, [2048], epochs=2, cap=False)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2)  # KiB -> GiB


def throughput_pair(sizes: list[str], keras_first: bool) -> dict:
    """One paired run of the throughput figures. mlpipe runs in two processes (batches up to
    512, then 2048: train.op_threads auto differs) and plain Keras in one, which of the two
    first alternating between pairs; then scikit-learn and NumPy's sgemm in this process."""
    rates: dict[int, dict[str, float]] = {b: {} for b in BATCHES}
    params = 0
    order = ("keras", "mlpipe", BF16) if keras_first else (BF16, "mlpipe", "keras")
    for which in order:
        if which == "keras":
            run = child(["--child", "keras", "--batches", ",".join(map(str, BATCHES)), *sizes])
            for batch, rate in run["rates"].items():
                rates[int(batch)]["keras_fit"] = rate
            continue
        if which == BF16:
            run = child(["--child", "mlpipe", "--batches", "2048", "--precision", BF16, *sizes])
            rates[2048][BF16] = run["rates"]["2048"]
            continue
        for group in (BATCHES[:2], BATCHES[2:]):
            run = child(["--child", "mlpipe", "--batches", ",".join(map(str, group)), *sizes])
            for batch, rate in run["rates"].items():
                rates[int(batch)]["mlpipe"] = rate
            params = run["trainable_params"]
    rows, epochs = int(sizes[1]), int(sizes[3])
    x, y = synthetic(rows)
    for batch in SKLEARN_BATCHES:
        n = rows_at(batch, rows)
        rates[batch]["sklearn"] = sklearn_rate(x[:n], y[:n], batch, epochs)
    rates[2048]["gemm_bound"] = gemm_bound(2048)
    gflops = sgemm_gflops(512 if rows < 10_000 else 4096)
    print({b: {k: round(v) for k, v in r.items()} for b, r in rates.items()}, flush=True)
    return {"rates": rates, "params": params, "sgemm_gflops": gflops}


def throughput(pairs: int, sizes: list[str]) -> dict:
    """Every throughput figure and ratio over `pairs` paired runs: medians and ranges."""
    runs = [throughput_pair(sizes, keras_first=i % 2 == 1) for i in range(pairs)]
    params = runs[0]["params"]
    samples = {}
    ratios = {}

    def ratio(name: str, batch: int, over: str, of: str = "mlpipe") -> None:
        ratios[name] = spread([r["rates"][batch][of] / r["rates"][batch][over] for r in runs])

    for batch in BATCHES:
        setups = ["mlpipe", "keras_fit"] + (["sklearn"] if batch in SKLEARN_BATCHES else [])
        for other in setups[1:]:
            ratio(f"mlpipe_over_{other}_{batch}", batch, other)
        if batch == 2048:
            setups += [BF16, "gemm_bound"]
        samples[str(batch)] = {
            k: spread([r["rates"][batch][k] for r in runs], digits=1) for k in setups
        }
    ratio("bf16_over_float32_2048", 2048, "mlpipe", of=BF16)
    ratio("bf16_over_keras_fit_2048", 2048, "keras_fit", of=BF16)
    ratio("gemm_bound_fraction_2048", 2048, "gemm_bound")
    ratios["sgemm_fraction_bs2048"] = spread(
        [6 * params * r["rates"][2048]["mlpipe"] / 1e9 / r["sgemm_gflops"] for r in runs]
    )
    return {
        "trainable_params": params,
        "samples_per_s": samples,
        "ratios": ratios,
        "sgemm_gflops": spread([r["sgemm_gflops"] for r in runs], digits=1),
    }


def ranged(figure: dict, form: str = ".2f") -> str:
    return f"{figure['median']:{form}} ({figure['min']:{form}}-{figure['max']:{form}})"


def markdown(results: dict) -> str:
    from mlpipe.util.markdown import table

    if "ratios" not in results:
        return pipeline_markdown(results)
    ratios = results["ratios"]
    header = ["batch", "mlpipe", "plain Keras fit", "scikit-learn"]
    header += ["mlpipe / Keras", "mlpipe / sklearn"]
    rows = []
    for batch, r in results["samples_per_s"].items():
        speeds = [f"{r[k]['median']:,.0f}" if k in r else "-" for k in SETUPS]
        sk_ratio = ratios.get(f"mlpipe_over_sklearn_{batch}")
        rows.append(
            [
                batch,
                *speeds,
                ranged(ratios[f"mlpipe_over_keras_fit_{batch}"]),
                ranged(sk_ratio) if sk_ratio else "-",
            ]
        )
    at_2048 = results["samples_per_s"]["2048"]
    if BF16 in at_2048:
        bf16, keras = (f"{at_2048[k]['median']:,.0f}" for k in (BF16, "keras_fit"))
        bf16_keras = ranged(ratios["bf16_over_keras_fit_2048"])
        rows.append([f"2048, {BF16}", bf16, keras, "-", bf16_keras, "-"])
    lines = [table(header, rows), ""]
    pairs = len(ratios["sgemm_fraction_bs2048"]["runs"])
    lines.append(
        f"Samples per second, medians of {pairs} paired runs (ratios: median, then the range "
        f"of the pairs' ratios); epochs of {results['rows']:,} rows x {FEATURES} features "
        f"(at most 800 batches: {rows_at(32, results['rows']):,} rows at batch 32), MLP "
        f"{HIDDEN}. NumPy sgemm: {results['sgemm_gflops']['median']:.0f} GFLOP/s; mlpipe at "
        f"batch 2048 reaches {ranged(ratios['sgemm_fraction_bs2048'])} of it."
    )
    if "gemm_bound_fraction_2048" in ratios:
        bound = at_2048["gemm_bound"]["median"]
        lines.append(
            f"At batch 2048, `train.precision: {BF16}` trains at "
            f"{ranged(ratios['bf16_over_float32_2048'])} times float32's rate. The network's "
            f"matrix products alone, timed in NumPy, would train {bound:,.0f} samples/s: "
            f"mlpipe in float32 reaches {ranged(ratios['gemm_bound_fraction_2048'])} of that."
        )
    digits = results["digits_valid_accuracy"]
    lines.append(
        f"Digits, validation accuracy after {digits['epochs']} epochs at batch 32 (seeds "
        f"{', '.join(map(str, digits['seeds']))}): mlpipe's path "
        f"{', '.join(f'{a:.4f}' for a in digits['mlpipe'])}; `fit` on arrays "
        f"{', '.join(f'{a:.4f}' for a in digits['keras_fit'])}."
    )
    return "\n".join(lines) + "\n" + pipeline_markdown(results)


def pipeline_markdown(results: dict) -> str:
    lines = []
    if results.get("e2e_over_plain"):
        e2e, plain = results["e2e_repro_s"], results["plain_script_s"]
        lines.append(
            f"- `dvc repro --force` of the default pipeline / one plain script doing the same "
            f"work: {ranged(results['e2e_over_plain'])} ({e2e['median']:.1f} s / "
            f"{plain['median']:.1f} s, medians of {len(e2e['runs'])} paired runs)"
        )
    for key in ("noop_repro_s", "peak_rss_gb_2m_rows"):
        if results.get(key) is not None:
            lines.append(f"- `{key}`: {results[key]}")
    return "".join(f"{line}\n" for line in lines)


def training_figures(quick: bool, pairs: int) -> dict:
    """The throughput pairs, digits' accuracies both ways and (unless `quick`) peak memory."""
    rows = 4_000 if quick else 100_000
    epochs = 2 if quick else 3  # one of warm-up, then the timed ones
    results: dict = {
        "rows": rows,
        **throughput(pairs, ["--rows", str(rows), "--epochs", str(epochs)]),
    }
    seeds = DIGITS_SEEDS[:1] if quick else DIGITS_SEEDS
    digits_epochs = 2 if quick else DIGITS_EPOCHS
    seed_list = ",".join(map(str, seeds))
    digits = child(["--child", "digits", "--epochs", str(digits_epochs), "--seeds", seed_list])
    results["digits_valid_accuracy"] = {"epochs": digits_epochs, "seeds": list(seeds), **digits}
    if not quick:
        results["peak_rss_gb_2m_rows"] = round(peak_rss_gb(2_000_000), 2)
    return results


def run_child(args) -> dict:
    if args.child == "mlpipe":
        return mlpipe_rates(args.rows, args.batches, args.epochs, args.precision)
    if args.child == "keras":
        return keras_rates(args.rows, args.batches, args.epochs)
    return digits_accuracy(args.epochs, args.seeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes; skip memory")
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="the pipeline's figures alone (dvc repro against a plain script); without it, "
        "the training figures alone; each run keeps the other's figures in results.json",
    )
    parser.add_argument("--pairs", type=int, help="paired runs per figure (default 5; quick 2)")
    parser.add_argument("--memory-probe", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=["mlpipe", "keras", "digits"], help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    numbers = lambda v: [int(n) for n in v.split(",")]  # noqa: E731
    parser.add_argument("--batches", type=numbers, help=argparse.SUPPRESS)
    parser.add_argument("--seeds", type=numbers, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench")
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(args.memory_probe)
        return
    if args.child:
        print(json.dumps(run_child(args)))
        return

    pairs = args.pairs or (2 if args.quick else 5)
    saved = args.out / "results.json"
    previous = json.loads(saved.read_text()) if saved.is_file() else {}
    if args.pipeline:  # the training figures stay as the last run measured them
        results = {**previous, **pipeline_seconds(pairs)}
    else:
        results = {k: previous[k] for k in PIPELINE_FIGURES if k in previous}
        results.update(training_figures(args.quick, pairs))
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
