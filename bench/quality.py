"""Model quality, measured: mlpipe's default MLP, the tabular recipe (examples/tabular.yaml) and
its pieces one at a time, against scikit-learn's MLP and HistGradientBoosting, on the same
splits over several seeds. Prints a markdown table: validation and test score, mean +/- std,
training seconds and parameters per model.

Runs mlpipe in-process (prepare, build and train as the stages do, without dvc). The seed
seeds the split and the initial weights, as `seed` in params.yaml does. Choose settings on the
validation column only; the test column is for reporting.

    nice -n 10 python bench/quality.py california --seeds 42
    nice -n 10 python bench/quality.py categorical --models default recipe hgb

Data sets: california (regression, RMSE in $100,000), categorical (built from California: every
column a category, binary target, see `categorical_frame`), digits (accuracy).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from mlpipe import dataset  # noqa: E402
from mlpipe.params import parse_params  # noqa: E402
from mlpipe.schema import encode_target  # noqa: E402

CALIFORNIA = ROOT / "data/raw/california_housing.csv"
RECIPE = yaml.safe_load((ROOT / "examples/tabular.yaml").read_text())
# The default MLP: the model and train sections of params.yaml, as the pipeline runs them.
DEFAULT = {
    k: v
    for k, v in yaml.safe_load((ROOT / "params.yaml").read_text()).items()
    if k in ("model", "train")
}

# The ablation: `base` is the default MLP trained and sized as in the recipe (its train
# section, hidden units and dropout), and each piece of the recipe is added to it alone
# (`base+<piece>`); `recipe-<piece>` is the recipe with that piece set back to the default,
# since pieces can pay only together.
BASE: dict[str, Any] = {
    "model": {k: RECIPE["model"][k] for k in ("hidden_units", "dropout")},
    "train": RECIPE["train"],
}
ADDED: dict[str, dict[str, Any]] = {
    "glorot": {"kernel_initializer": "glorot_uniform"},
    "robust": {"numeric_encoding": "robust"},
    "quantile": {"numeric_encoding": "quantile"},
    "periodic": {"numeric_encoding": "periodic"},
    "embedding": {"categorical_encoding": "embedding"},
    "ensemble": {"ensemble_size": 8},
    "ensemble_independent": {"ensemble_size": 4, "ensemble_weights": "independent"},
    "std_target": {"standardize_target": True},
}
PIECES: dict[str, dict[str, Any]] = {
    "base": BASE,
    **{
        f"base+{name}": {"model": {**BASE["model"], **piece}, "train": BASE["train"]}
        for name, piece in ADDED.items()
    },
}
# Each piece of the recipe, and what it replaces: the default, or for the periodic embeddings
# the quantile map they read, and for the quantile map the robust scaling.
DEFAULTS: dict[str, dict[str, Any]] = {
    "periodic": {"numeric_encoding": "quantile"},
    "quantile": {"periodic": {**RECIPE["model"]["periodic"], "scaling": "robust"}},
    "glorot": {"kernel_initializer": "he_normal"},
    "ensemble": {"ensemble_size": 1, "ensemble_weights": "shared"},
    "embedding": {"categorical_encoding": "one_hot"},
    "std_target": {"standardize_target": False},
}
WITHOUT: dict[str, dict[str, Any]] = {
    f"recipe-{name}": {"model": {**RECIPE["model"], **default}, "train": RECIPE["train"]}
    for name, default in DEFAULTS.items()
}
MLPIPE_MODELS = {"default": DEFAULT, "recipe": RECIPE, **PIECES, **WITHOUT}
OTHER_MODELS = ("sklearn_mlp", "hgb")


def categorical_frame() -> pd.DataFrame:
    """California with every column a category: ocean_proximity, each numeric column cut into
    16 quantile bins of the whole file, and a 24 x 24 latitude-longitude grid cell (high
    cardinality, and an interaction no single column holds); target: the house value above
    the file's median (binary). Deterministic."""
    raw = pd.read_csv(CALIFORNIA)
    frame = pd.DataFrame({"ocean_proximity": raw["ocean_proximity"].astype(str)})
    for name in raw.columns.drop(["ocean_proximity", "median_house_value"]):
        bins = pd.qcut(raw[name], 16, labels=False, duplicates="drop")
        frame[name] = np.where(bins.isna(), "", "b" + bins.astype("Int64").astype(str))
    lat = pd.cut(raw["latitude"], 24, labels=False)
    lon = pd.cut(raw["longitude"], 24, labels=False)
    frame["cell"] = "c" + lat.astype(str) + "_" + lon.astype(str)
    value = raw["median_house_value"]
    frame["expensive"] = np.where(value > value.median(), "yes", "no")
    return frame


def data_set(name: str) -> tuple[pd.DataFrame | None, dict]:
    """(the frame, or None for a scikit-learn source; the data section)."""
    if name == "california":
        data = {"target": "median_house_value", "target_scale": 100000}
        return pd.read_csv(CALIFORNIA), data
    if name == "categorical":
        frame = categorical_frame()
        features = [c for c in frame.columns if c != "expensive"]
        return frame, {"target": "expensive", "categorical": features}
    if name == "digits":
        return None, {"source": "sklearn:digits"}
    raise SystemExit(f"unknown data set {name!r}: california, categorical or digits")


def splits_for(name: str, seed: int):
    frame, data = data_set(name)
    params = parse_params({"seed": seed, "data": data})
    default_target = None
    if frame is None:
        frame, default_target = dataset.load_source(params.data)
    return dataset.prepare(frame, default_target, params.data, seed)


def metric_of(task: str) -> str:
    return "rmse" if task == "regression" else "accuracy"


def run_mlpipe(splits, schema, seed: int, preset: dict) -> tuple[dict, float, int]:
    from mlpipe import features
    from mlpipe.evaluation import metrics
    from mlpipe.modeling import models
    from mlpipe.training import fit
    from mlpipe.util import runtime

    params = parse_params({"seed": seed, **preset})
    runtime.set_op_threads(runtime.op_threads(params.train.op_threads, params.train.batch_size))
    runtime.seed_everything(seed)
    model = models.build_model(params.model, schema, splits["train"])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        best, _ = fit.train(
            model,
            params.train,
            {s: splits[s] for s in ("train", "valid")},
            schema,
            fit.RunDirs.inside(Path(tmp)),
            seed=seed,
            learning_rate=float(params.train.optimizer.learning_rate),
        )
    seconds = time.perf_counter() - start
    scores = {}
    for split in ("valid", "test"):
        inputs = features.model_inputs(splits[split], schema)
        raw = np.asarray(features.predict(best, inputs, 1024))
        y = encode_target(splits[split][schema.target], schema)
        scores[split] = metrics.score(schema, y, raw)[metric_of(schema.task)]
    trainable = sum(int(np.prod(w.shape)) for w in best.trainable_weights)
    return scores, seconds, trainable


def run_sklearn(splits, schema, seed: int, which: str) -> tuple[dict, float, int]:
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import Pipeline
    from threadpoolctl import threadpool_limits

    from mlpipe.evaluation import baselines, metrics

    columns = schema.feature_names
    train_x = splits["train"][columns]
    y = {s: encode_target(splits[s][schema.target], schema) for s in splits}
    if which == "hgb":
        pipeline = baselines.baseline_pipelines(train_x, schema.task)["gradient_boosting"]
    else:
        mlp = MLPRegressor if schema.task == "regression" else MLPClassifier
        net = mlp(
            hidden_layer_sizes=(300, 100), early_stopping=True, random_state=seed, max_iter=500
        )
        pipeline = Pipeline([("prepare", baselines.preprocessor(train_x)), ("model", net)])
    start = time.perf_counter()
    with threadpool_limits(limits=1):
        pipeline.fit(train_x, y["train"])
    seconds = time.perf_counter() - start
    scores = {}
    for split in ("valid", "test"):
        x = splits[split][columns]
        if schema.task == "regression":
            result = metrics.regression_metrics(y[split], pipeline.predict(x))
        else:
            result = metrics.classification_metrics(y[split], pipeline.predict_proba(x))
        scores[split] = result[metric_of(schema.task)]
    model = pipeline[-1]
    params = sum(w.size for w in model.coefs_ + model.intercepts_) if which != "hgb" else 0
    return scores, seconds, params


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", choices=["california", "categorical", "digits"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["default", "recipe", *OTHER_MODELS],
        choices=[*MLPIPE_MODELS, *OTHER_MODELS],
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="MODEL.SECTION.KEY=YAML",
        help="override a setting of one mlpipe model, e.g. recipe.model.dropout=0.1",
    )
    args = parser.parse_args()
    logging.disable(logging.INFO)
    presets = {name: _copy(preset) for name, preset in MLPIPE_MODELS.items()}
    for item in args.set:
        key, value = item.split("=", 1)
        model, *path = key.split(".")
        node = presets[model]
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = yaml.safe_load(value)
    results: dict[str, list[tuple[dict, float, int]]] = {name: [] for name in args.models}
    task = "regression"
    for seed in args.seeds:
        splits, schema = splits_for(args.data, seed)
        task = schema.task
        for name in args.models:
            if name in OTHER_MODELS:
                result = run_sklearn(splits, schema, seed, name)
            else:
                result = run_mlpipe(splits, schema, seed, presets[name])
            results[name].append(result)
            print(
                f"seed {seed} {name}: valid {result[0]['valid']:.4f} test {result[0]['test']:.4f}"
                f" {result[1]:.0f}s",
                file=sys.stderr,
                flush=True,
            )
    metric = metric_of(task)
    print(f"\n{args.data}, {metric}, seeds {' '.join(map(str, args.seeds))}\n")
    print(f"| model | valid {metric} | test {metric} | train s | params |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        valid = [r[0]["valid"] for r in runs]
        test = [r[0]["test"] for r in runs]
        seconds = statistics.mean(r[1] for r in runs)
        print(f"| {name} | {mean_std(valid)} | {mean_std(test)} | {seconds:.0f} | {runs[0][2]:,} |")


def _copy(preset: dict) -> dict:
    return yaml.safe_load(yaml.safe_dump(preset))


if __name__ == "__main__":
    main()
