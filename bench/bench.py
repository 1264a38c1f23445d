"""Training throughput of mlpipe's input path against plain Keras and scikit-learn, in one run.

Measures samples per second of one epoch after warm-up on synthetic data (rows x 64 float32
features, 10 classes) with a (300, 100) MLP, for:
  (a) mlpipe: the model from `models.build_model`, compiled by `training.compile_model`
      (steps_per_execution auto) and fed by `training.epoch_batches`;
  (b) plain Keras: the same layers without preprocessing, `model.fit(numpy_x, numpy_y)`;
  (c) scikit-learn's MLPClassifier((300, 100)) with the same batch size (one partial_fit).
Also NumPy's float32 matrix-multiply rate, the wall time of the DVC pipeline (no-op and forced,
in a temporary clone) against one plain script doing the same work, and the peak memory of
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FEATURES, CLASSES, HIDDEN = 64, 10, (300, 100)


def synthetic(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, FEATURES), dtype=np.float32)
    y = (x[:, :CLASSES] + 0.5 * rng.standard_normal((rows, CLASSES), dtype=np.float32)).argmax(1)
    return x, y


def schema() -> dict:
    features = [{"name": f"x{i}", "input": f"x{i}", "kind": "numeric"} for i in range(FEATURES)]
    return {
        "features": features,
        "target": "y",
        "task": "classification",
        "classes": list(range(CLASSES)),
        "weight_column": None,
    }


def epoch_rate(fit_one_epoch, rows: int) -> float:
    """Samples per second of the second of two epochs: the first pays for tracing."""
    fit_one_epoch()
    start = time.perf_counter()
    fit_one_epoch()
    return rows / (time.perf_counter() - start)


def mlpipe_rate(x, y, batch_size: int) -> tuple[float, int]:
    import pandas as pd

    from mlpipe import features, models, runtime, training
    from mlpipe.config import parse_params

    params = parse_params(
        {"model": {"hidden_units": list(HIDDEN)}, "train": {"batch_size": batch_size}}
    )
    runtime.seed_everything(0)
    # As the train stage does: preprocessing learned once, the features computed once, and
    # only the MLP behind it trained epoch after epoch.
    frame = pd.DataFrame(x, columns=[f["name"] for f in schema()["features"]], copy=False)
    preprocessor, model = models.split_model(models.build_model(params.model, schema(), frame))
    x = features.transform(preprocessor, frame, schema())
    del frame
    steps = training.steps(len(y), batch_size)
    training.compile_model(model, params.train, schema(), steps)
    epoch = iter(range(10**6))

    def one_epoch():
        first = next(epoch)
        batches = training.epoch_batches((x, y), batch_size, 0, first, first + 1)
        model.fit(batches, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)

    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    return epoch_rate(one_epoch, len(y)), trainable


def keras_rate(x, y, batch_size: int) -> float:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((FEATURES,))]
        + [keras.layers.Dense(u, activation="relu") for u in HIDDEN]
        + [keras.layers.Dense(CLASSES, activation="softmax")]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return epoch_rate(lambda: model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0), len(x))


def sklearn_rate(x, y, batch_size: int) -> float:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    model = MLPClassifier(hidden_layer_sizes=HIDDEN, batch_size=batch_size, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return epoch_rate(lambda: model.partial_fit(x, y, classes=np.arange(CLASSES)), len(x))


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
    x, y = synthetic(rows)
    mlpipe_rate(x, y, batch_size=2048)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2)  # KiB -> GiB


def markdown(results: dict) -> str:
    rows = results["samples_per_s"]
    lines = [
        "| batch | mlpipe | plain Keras fit | scikit-learn | mlpipe / Keras | mlpipe / sklearn |",
        "|---|---|---|---|---|---|",
    ]
    for batch, r in rows.items():
        sk = f"{r['sklearn']:,.0f}" if r.get("sklearn") else "-"
        sk_ratio = f"{r['mlpipe'] / r['sklearn']:.2f}" if r.get("sklearn") else "-"
        lines.append(
            f"| {batch} | {r['mlpipe']:,.0f} | {r['keras_fit']:,.0f} | {sk} | "
            f"{r['mlpipe'] / r['keras_fit']:.2f} | {sk_ratio} |"
        )
    lines.append("")
    lines.append(
        f"Samples per second, {results['rows']:,} rows x {FEATURES} features, "
        f"MLP {HIDDEN}. NumPy sgemm: {results['sgemm_gflops']:.0f} GFLOP/s; mlpipe at "
        f"batch 2048 reaches {results['sgemm_fraction_bs2048']:.2f} of it."
    )
    for key in ("e2e_repro_s", "noop_repro_s", "plain_script_s", "peak_rss_gb_2m_rows"):
        if results.get(key) is not None:
            lines.append(f"- `{key}`: {results[key]}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes; skip DVC and memory")
    parser.add_argument("--memory-probe", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench")
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(args.memory_probe)
        return

    rows = 4_000 if args.quick else 200_000
    x, y = synthetic(rows)
    rates, params = {}, 0
    for batch in (32, 256, 2048):
        mlpipe, params = mlpipe_rate(x, y, batch)
        rates[batch] = {"mlpipe": mlpipe, "keras_fit": keras_rate(x, y, batch)}
        if batch != 2048:
            rates[batch]["sklearn"] = sklearn_rate(x, y, batch)
        print(batch, {k: round(v) for k, v in rates[batch].items()}, flush=True)
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
        "noop_repro_s": None,
        "e2e_repro_s": None,
        "plain_script_s": None,
        "e2e_over_plain": None,
        "peak_rss_gb_2m_rows": None,
    }
    if not args.quick:
        results.update(pipeline_seconds())
        results["peak_rss_gb_2m_rows"] = round(peak_rss_gb(2_000_000), 2)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
