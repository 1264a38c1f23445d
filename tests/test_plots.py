"""The evaluation plots: their data, their PNGs, and the page `dvc plots show` makes of them."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT
from mlpipe.evaluation import plots
from mlpipe.schema import Schema
from mlpipe.training import lr_find

CLASSIFICATION = Schema(
    features=(), target="y", task="classification", classes=("cat", "dog", "fox")
)
REGRESSION = Schema(features=(), target="y", task="regression")


def three_classes(n: int = 90, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    proba = rng.dirichlet(np.ones(3), size=n)
    proba[np.arange(n), y] += rng.random(n)  # informative, not perfect
    return y, proba / proba.sum(axis=1, keepdims=True)


def task_data(schema: Schema) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(target, raw model outputs, the data files that should have rows) for the task."""
    y, proba = three_classes()
    if schema.task == "classification":
        return y, proba, plots.CLASSIFICATION_DATA
    return y * 1.0, proba[:, :1] * 2, plots.REGRESSION_DATA


def test_curves_of_a_perfect_ranking():
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.4, 0.6], [0.2, 0.8]])
    roc = plots.roc_points(y, proba)
    assert len(roc) == plots.CURVE_POINTS
    assert (roc["tpr"] == 1).all()
    pr = plots.precision_recall_points(y, proba)
    assert (pr["precision"] == 1).all() and pr["recall"].iloc[-1] == 1


def test_precision_recall_is_the_best_precision_at_that_recall_or_more():
    # Ranked: pos, neg, pos. At recall 0.5 precision is 1; at recall 1 it is 2/3.
    y = np.array([1, 0, 1])
    proba = np.array([[0.1, 0.9], [0.2, 0.8], [0.3, 0.7]])
    pr = plots.precision_recall_points(y, proba).set_index("recall")["precision"]
    assert pr.loc[0.5] == 1 and pr.loc[0.51] == pytest.approx(2 / 3) and pr.loc[1.0] == 2 / 3


def test_curves_stay_bounded_on_a_large_split():
    y, proba = three_classes(n=30_000)
    assert len(plots.roc_points(y, proba)) == plots.CURVE_POINTS
    calibration = plots.calibration_points(y, proba)
    assert len(calibration) <= plots.CALIBRATION_BINS
    assert calibration["count"].sum() == 30_000
    # Top-class calibration: the mean of "was the top class right" over all rows is accuracy.
    accuracy = np.mean(proba.argmax(axis=1) == y)
    weighted = np.average(calibration["observed"], weights=calibration["count"])
    assert weighted == pytest.approx(accuracy)


def test_residual_rows_are_a_fixed_subset():
    rng = np.random.default_rng(0)
    actual = rng.normal(size=5000)
    predicted = (actual + 0.1)[:, None]
    rows = plots.residual_rows(actual, predicted)
    assert len(rows) == plots.MAX_SCATTER_POINTS
    assert rows.equals(plots.residual_rows(actual, predicted))
    assert np.allclose(rows["residual"], -0.1)
    assert len(plots.residual_rows(actual[:10], predicted[:10])) == 10


@pytest.mark.parametrize("schema", [CLASSIFICATION, REGRESSION], ids=["classification", "regr"])
def test_every_task_writes_every_data_file(schema):
    y, raw, own = task_data(schema)
    files = plots.evaluation_files(schema, y, raw)
    for name, columns in plots.DATA_COLUMNS.items():
        frame = pd.read_csv(io.BytesIO(files[name]))
        assert list(frame.columns) == columns
        assert (len(frame) > 0) == (name in own), name
    pngs = {name for name in files if name.endswith(".png")}
    if schema.task == "classification":
        assert pngs == {"confusion.png", "roc.png", "precision_recall.png", "calibration.png"}
    else:
        assert pngs == {"predicted_vs_actual.png", "residuals.png"}


def test_files_are_byte_identical_across_runs():
    y, proba = three_classes()
    training = {"loss": {"train": pd.DataFrame({"step": [0, 1], "loss": [1.0, 0.5]})}}
    first = plots.evaluation_files(CLASSIFICATION, y, proba, training)
    second = plots.evaluation_files(CLASSIFICATION, y, proba, training)
    assert first == second
    assert first["training.png"].startswith(b"\x89PNG")
    assert b"Software" not in first["roc.png"] and b"matplotlib" not in first["roc.png"]


def test_training_curves_are_read_from_dvclive_files(tmp_path):
    write_dvclive(tmp_path / "live", ("loss", "rmse"))
    curves = plots.read_training_curves(tmp_path / "live")
    assert set(curves) == {"loss", "rmse", "learning_rate", "overfit_ratio"}
    assert set(curves["rmse"]) == {"train", "eval"}
    assert list(curves["loss"]["eval"]["loss"]) == [1.0, 0.5, 0.25]


def write_dvclive(folder: Path, metrics: tuple[str, ...]) -> None:
    """Per-epoch TSV files laid out as DVCLive writes them in the train stage."""
    series = {"train": (*metrics, "learning_rate", "overfit_ratio"), "eval": metrics}
    for split, names in series.items():
        (folder / "plots" / "metrics" / split).mkdir(parents=True)
        for name in names:
            rows = "".join(f"{step}\t{value}\n" for step, value in enumerate([1.0, 0.5, 0.25]))
            (folder / "plots" / "metrics" / split / f"{name}.tsv").write_text(
                f"step\t{name}\n{rows}"
            )


def test_dvc_yaml_declares_only_files_every_task_writes():
    declared = set()
    for entry in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]:
        if isinstance(entry, str):  # an image
            declared.add(entry)
            continue
        ((plot_id, props),) = entry.items()
        declared |= set(props["y"]) if isinstance(props.get("y"), dict) else {plot_id}
    evaluation = {p for p in declared if p.startswith("plots/evaluate/")}
    assert evaluation == {f"plots/evaluate/{name}" for name in plots.DATA_COLUMNS}
    # The lr_find stage writes both whatever the rate (only a header when it is a number)
    range_test = {"plots/lr_find.csv", "plots/lr_find.png"}
    assert range_test <= declared
    training = {
        p.removeprefix("plots/training/plots/metrics/") for p in declared - evaluation - range_test
    }
    # DVCLive writes these whatever the task; task metrics come from the folder `eval`
    assert training == {
        "train/loss.tsv",
        "eval/loss.tsv",
        "train/learning_rate.tsv",
        "train/overfit_ratio.tsv",
        "eval",
    }


# The page of `dvc plots show`, in a real browser

TRAINING_CHARTS = 3  # loss (train and eval together), learning rate, overfit ratio


def plots_repo(tmp_path: Path, schema: Schema) -> Path:
    """A repo with this checkout's dvc.yaml, DVC config and page template, and plot files of
    the task laid out as the pipeline writes them."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(ROOT / "vendor", repo / "vendor")
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")
    # The range test's files as lr_find writes them when the rate is a number
    (repo / "plots").mkdir()
    (repo / "plots" / "lr_find.csv").write_text(lr_find.curve_csv(None))
    (repo / "plots" / "lr_find.png").write_bytes(lr_find.curve_png(None, {}, "skipped"))
    # What Keras logs per epoch for each task
    metrics = ("loss", "accuracy") if schema.task == "classification" else ("loss", "rmse", "mae")
    write_dvclive(repo / "plots" / "training", metrics)
    y, raw, _ = task_data(schema)
    (repo / "plots" / "evaluate").mkdir()
    for name, content in plots.evaluation_files(schema, y, raw).items():
        (repo / "plots" / "evaluate" / name).write_bytes(content)
    return repo


# Collects what the page logs as errors into the DOM, where --dump-dom shows it.
CONSOLE_CAPTURE = """<script>
(function () {
    function keep(text) {
        var pre = document.getElementById("captured-errors");
        if (!pre) {
            pre = document.createElement("pre");
            pre.id = "captured-errors";
            document.documentElement.appendChild(pre);
        }
        pre.textContent += text + "\\n";
    }
    var error = console.error;
    console.error = function () {
        keep(Array.prototype.join.call(arguments, " "));
        error.apply(console, arguments);
    };
    window.addEventListener("error", function (e) { keep("uncaught: " + e.message); });
    window.addEventListener("unhandledrejection", function (e) { keep("rejected: " + e.reason); });
})();
</script>"""


def render(page: Path) -> str:
    """The DOM of `page` after headless Chromium has run its scripts."""
    html = page.read_text()
    page.write_text(html.replace("<head>", "<head>\n" + CONSOLE_CAPTURE, 1))
    result = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=15000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it",
)
@pytest.mark.parametrize(
    ("schema", "task_charts"),
    [
        # eval loss and accuracy; confusion (counts, normalized), ROC, precision-recall, calibration
        (CLASSIFICATION, 2 + 5),
        # eval loss, rmse and mae; predicted vs actual, residuals
        (REGRESSION, 3 + 2),
    ],
    ids=["classification", "regression"],
)
def test_dvc_plots_show_renders_every_chart_in_chromium(tmp_path, schema, task_charts):
    repo = plots_repo(tmp_path, schema)
    shown = subprocess.run(
        [sys.executable, "-m", "dvc", "plots", "show", "-o", "out"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr
    assert "failed to load" not in shown.stdout + shown.stderr  # no declared file is missing
    page = repo / "out" / "index.html"
    assert "cdn.jsdelivr.net" not in page.read_text()  # Vega comes inlined, not from a CDN

    dom = render(page)
    errors = re.search(r'<pre id="captured-errors">(.*?)</pre>', dom, re.S)
    assert errors is None, errors.group(1)
    charts = re.findall(r'<div id="[^"]*" class="vega-embed[^"]*">', dom)
    drawn = re.findall(r'<canvas width="(\d+)" height="(\d+)" class="marks"', dom)
    expected = TRAINING_CHARTS + task_charts
    assert len(charts) == expected
    assert len(drawn) == expected and all(int(w) > 100 and int(h) > 100 for w, h in drawn)
