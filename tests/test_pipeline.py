"""End to end: the real `dvc repro` and `dvc exp run` in a throw-away clone of this repository."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STAGES = {"prepare", "build", "baselines", "lr_find", "train", "evaluate", "export"}
# Small enough for seconds per stage, big enough that metrics are meaningful.
TINY: dict[str, dict] = {
    "model": {"hidden_units": [64]},
    "train": {"epochs": 4, "early_stopping": {"patience": 2}},
    "export": {"formats": ["keras"]},
}


def run(
    args: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a command as a user would in `cwd`, with this venv's tools, plus `env`."""
    venv_bin = str(Path(sys.executable).parent)
    full_env = {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}",
        # The clone's own code, not the editable install's, is what runs.
        "PYTHONPATH": str(cwd / "src"),
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
        **(env or {}),
    }
    result = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout}\n{result.stderr}")
    return result


def stages_run(result: subprocess.CompletedProcess) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", result.stdout + result.stderr))


def clone_of_root(tmp_path_factory, name: str = "clone") -> Path:
    """A throw-away `git clone` of this repository."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    path = tmp_path_factory.mktemp(name) / "repo"
    run(["git", "clone", "-q", str(ROOT), str(path)], cwd=ROOT)
    return path


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    return clone_of_root(tmp_path_factory)


def test_committed_metrics_and_plots_show_without_running(clone):
    metrics = run(["dvc", "metrics", "show", "--json"], cwd=clone)
    shown = json.loads(metrics.stdout)
    values = next(iter(shown.values()))["data"]["metrics/evaluate.json"]["data"]
    assert values["accuracy"] >= 0.975
    # only the headline metrics, so that `dvc exp show` stays readable; the rest is in details
    assert set(values) == {"accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "log_loss"}
    details = json.loads((clone / "metrics/details/evaluate.json").read_text())
    assert details["valid"]["accuracy"] >= 0.95
    baselines = json.loads((clone / "metrics/details/baselines.json").read_text())
    assert baselines["gradient_boosting"]["accuracy"] >= 0.95
    run(["dvc", "plots", "show", "-o", "plots_html"], cwd=clone)
    page = (clone / "plots_html" / "index.html").read_text()
    # 3 training charts, 2 validation metrics (loss, accuracy), 7 of the test split, of which
    # the 2 for regression are empty, and the learning-rate range test
    assert page.count("vegaEmbed(") == 13
    assert not (clone / "models" / "model").exists()


def run_tiny(clone: Path) -> Path:
    """Commit the TINY params in `clone` and run the pipeline once."""
    params = yaml.safe_load((clone / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section] = {**params[section], **values}
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "commit", "-qam", "tiny params"], cwd=clone)
    first = run(["dvc", "repro"], cwd=clone)
    # the baselines read only the data, which the tiny params leave as committed
    assert stages_run(first) == STAGES - {"baselines"}
    return clone


@pytest.fixture(scope="module")
def tiny(clone) -> Path:
    return run_tiny(clone)


def test_first_run_trains_a_useful_model(tiny):
    scores = json.loads((tiny / "metrics/evaluate.json").read_text())
    assert scores["accuracy"] > 0.85
    assert (tiny / "models/export/model.keras").is_file()
    assert run(["dvc", "status"], cwd=tiny).stdout.strip().endswith("up to date.")


def test_repro_without_changes_runs_nothing(tiny):
    assert stages_run(run(["dvc", "repro"], cwd=tiny)) == set()


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("train.optimizer.learning_rate=0.002", {"lr_find", "train", "evaluate", "export"}),
        ("model.hidden_units=[24,12]", {"build", "lr_find", "train", "evaluate", "export"}),
        ("evaluate.batch_size=64", {"evaluate"}),
        # With a number as the rate, the range test's settings cannot retrain.
        ("lr_find.max_lr=1.0", {"lr_find"}),
    ],
)
def test_experiment_reruns_only_affected_stages(tiny, setting, expected):
    result = run(["dvc", "exp", "run", "-S", setting], cwd=tiny)
    assert stages_run(result) == expected


def test_auto_learning_rate_trains_at_the_range_tests_suggestion(tiny):
    try:
        # Earlier tests leave their settings in the workspace: put the full range back.
        settings = ["-S", "train.optimizer.learning_rate=auto", "-S", "lr_find.max_lr=10.0"]
        result = run(["dvc", "exp", "run", *settings], cwd=tiny)
        assert stages_run(result) == {"lr_find", "train", "evaluate", "export"}
        summary = json.loads((tiny / "metrics/lr_find.json").read_text())
        record = json.loads((tiny / "models/learning_rate.json").read_text())
        # (The small model of earlier tests may saturate rather than explode: stopped_early
        # can be false here. The unit tests check the stop on a curve that explodes.)
        assert summary["range_test"] is True and summary["steps_run"] >= 5
        assert record == {"learning_rate": summary["suggested_learning_rate"], "source": "lr_find"}
        curve = (tiny / "plots/training/plots/metrics/train/learning_rate.tsv").read_text()
        used = [float(line.split("\t")[1]) for line in curve.splitlines()[1:]]
        assert used == pytest.approx([record["learning_rate"]] * len(used), rel=1e-6)
        assert json.loads((tiny / "metrics/evaluate.json").read_text())["accuracy"] > 0.85
        # Under auto the range test's settings do reach training, through the record.
        again = run(["dvc", "exp", "run", "-S", "lr_find.rule=steepest"], cwd=tiny)
        assert "lr_find" in stages_run(again)
    finally:
        run(["git", "checkout", "--", "params.yaml"], cwd=tiny)


@pytest.mark.parametrize(
    "setting",
    [
        "train.optimizer.learnin_rate=0.1",  # DVC itself refuses a key that is not there
        "+train.optimizer.learnin_rate=0.1",  # forced in, it reaches the stage's own check
    ],
)
def test_typo_fails_before_training(tiny, setting):
    try:
        result = run(["dvc", "exp", "run", "-S", setting], cwd=tiny, check=False)
    finally:
        run(["git", "checkout", "--", "params.yaml"], cwd=tiny)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "learnin_rate" in output
    if setting.startswith("+"):
        assert "did you mean `learning_rate`?" in output
    assert "epoch 1/" not in output


def test_typo_in_edited_params_stops_repro(tiny):
    params = (tiny / "params.yaml").read_text()
    (tiny / "params.yaml").write_text(params.replace("epochs:", "epohcs:"))
    try:
        result = run(["dvc", "repro"], cwd=tiny, check=False)
    finally:
        run(["git", "checkout", "--", "params.yaml"], cwd=tiny)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "`train.epohcs`; did you mean `epochs`?" in output
    assert "epoch 1/" not in output


def train_lock(clone: Path) -> dict:
    return yaml.safe_load((clone / "dvc.lock").read_text())["stages"]["train"]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_diverging_run_fails_and_keeps_the_previous_model(tiny):
    lock = train_lock(tiny)
    model, curves = folder_bytes(tiny / "models/model"), folder_bytes(tiny / "plots/training")
    settings = ["-S", "train.optimizer.name=sgd", "-S", "train.optimizer.learning_rate=1000000"]
    try:
        result = run(["dvc", "exp", "run", *settings], cwd=tiny, check=False)
    finally:
        run(["git", "checkout", "--", "params.yaml"], cwd=tiny)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert re.search(r"loss became nan at epoch 1, batch(es)? [\d-]+ ", output)
    assert "no output of this stage was replaced" in output
    assert folder_bytes(tiny / "models/model") == model
    assert folder_bytes(tiny / "plots/training") == curves
    # no checkpoint, no backup, no curves of the diverged run
    assert not list((tiny / "models").glob(".model.*"))
    assert not list((tiny / "plots").glob(".training.*"))
    assert train_lock(tiny) == lock


def test_forced_reruns_give_identical_metrics_and_lock(tiny):
    outputs = []
    for _ in range(2):
        assert stages_run(run(["dvc", "repro", "--force"], cwd=tiny)) == STAGES
        # dvc.lock hashes every output: model files, the SavedModel, data and plots
        outputs.append([(tiny / f).read_bytes() for f in ("metrics/evaluate.json", "dvc.lock")])
    assert outputs[0] == outputs[1]
    assert json.loads(outputs[0][0])["accuracy"] > 0.85


def test_outputs_are_readable_by_other_users(tiny):
    folders = ["models/export", "models/model", "data/prepared", "plots/evaluate"]
    modes = {
        path.relative_to(tiny).as_posix(): stat.S_IMODE(path.stat().st_mode)
        for folder in folders
        for path in [tiny / folder, *(tiny / folder).rglob("*")]
    }
    umask = os.umask(0)
    os.umask(umask)
    expected = {path: (0o777 if (tiny / path).is_dir() else 0o666) & ~umask for path in modes}
    assert modes == expected


def test_killed_repro_resumes_and_ends_as_an_uninterrupted_run(tiny):
    run(["dvc", "repro", "--force"], cwd=tiny)
    expected = (tiny / "metrics/evaluate.json").read_bytes()
    expected_model = (tiny / "models/model/model.keras").read_bytes()
    epochs = TINY["train"]["epochs"]

    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}"}
    env["PYTHONPATH"] = str(tiny / "src")
    process = subprocess.Popen(
        ["dvc", "repro", "--force", "--single-item", "train"],
        cwd=tiny,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    for line in process.stdout:
        if f"epoch 2/{epochs} " in line:
            os.killpg(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert (tiny / "models/.model.backup").is_dir()
    # The killed run replaced nothing: the last good outputs match dvc.lock, so nothing is out
    # of date, and the backup waits for train's next run with the same params and inputs.
    assert (tiny / "models/model/model.keras").read_bytes() == expected_model
    assert run(["dvc", "status"], cwd=tiny).stdout.strip().endswith("up to date.")

    result = run(["dvc", "repro", "--force", "--single-item", "train"], cwd=tiny)
    assert "resuming from the backup" in result.stdout + result.stderr
    assert (tiny / "models/model/model.keras").read_bytes() == expected_model
    summary = json.loads((tiny / "metrics/train.json").read_text())
    assert summary["epochs_run"] == epochs and summary["resumed_from_epoch"] >= 1
    assert not (tiny / "models/.model.backup").exists()
    # The resumed model has the uninterrupted run's bytes, so the stages after train find their
    # inputs unchanged and need no rerun.
    assert run(["dvc", "status"], cwd=tiny).stdout.strip().endswith("up to date.")
    assert (tiny / "metrics/evaluate.json").read_bytes() == expected


def test_an_example_preset_runs_as_a_named_experiment(tiny):
    """What `make example NAME=california_wide_deep` runs, cut to 2 epochs: the experiment's
    params.yaml records the preset, and its metrics list both outputs."""
    preset = run(
        [
            sys.executable,
            "-m",
            "mlpipe.tools.cli",
            "preset-args",
            "examples/california_wide_deep.yaml",
        ],
        cwd=tiny,
    )
    quick = ["train.epochs=2", "~evaluate.thresholds", "+evaluate.thresholds={}"]
    quick += ["evaluate.baselines=false"]
    command = ["dvc", "exp", "run", "-n", "wide_deep_quick", *shlex.split(preset.stdout)]
    try:
        result = run([*command, *(arg for q in quick for arg in ("-S", q))], cwd=tiny)
        assert stages_run(result) == STAGES
        params = yaml.safe_load((tiny / "params.yaml").read_text())
        assert params["model"]["api"] == "functional" and params["model"]["aux_output"] is True
        assert params["train"]["loss_weights"] == {"main": 0.9, "aux": 0.1}
        scores = json.loads((tiny / "metrics/details/evaluate.json").read_text())
        assert set(scores["outputs"]) == {"main", "aux"}
        assert scores["rmse"] == scores["outputs"]["main"]["rmse"] < 1.5
        shown = run(["dvc", "exp", "show", "--csv"], cwd=tiny).stdout
        assert "wide_deep_quick" in shown and "functional" in shown
    finally:
        run(["git", "checkout", "--", "params.yaml"], cwd=tiny)
