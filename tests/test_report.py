"""`make report`: what a change did against a git ref."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import stage_env
from mlpipe.tools import report

GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]


def git(repo: Path, *args: str) -> None:
    subprocess.run([*GIT, *args], cwd=repo, check=True, capture_output=True)


def commit_results(repo: Path, epochs: int, accuracy: float, valid: float, png: bytes) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump({"train": {"epochs": epochs, "seed": 1}}))
    scores = {"accuracy": accuracy, "log_loss": 0.2}
    (repo / "metrics" / "evaluate.json").write_text(json.dumps(scores))
    details = {**scores, "valid": {"accuracy": valid}, "per_class": {"cat": {"recall": valid}}}
    (repo / "metrics" / "details" / "evaluate.json").write_text(json.dumps(details))
    (repo / "plots" / "evaluate" / "roc.png").write_bytes(png)
    (repo / "plots" / "evaluate" / "roc.csv").write_text("fpr,tpr\n0,1\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", f"{epochs} epochs")


@pytest.fixture
def two_commits(tmp_path) -> Path:
    """A DVC repo without a remote whose last commit changed one param and its results."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    (repo / "metrics" / "details").mkdir(parents=True)
    (repo / "plots" / "evaluate").mkdir(parents=True)
    git(repo, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    stage = {
        "cmd": "python train.py",
        "params": ["train"],
        "metrics": [{"metrics/evaluate.json": {"cache": False}}],
    }
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": stage}}))
    commit_results(repo, epochs=10, accuracy=0.9, valid=0.88, png=b"old")
    commit_results(repo, epochs=20, accuracy=0.95, valid=0.9, png=b"new")
    return repo


def test_report_shows_the_param_change_and_metric_deltas(two_commits):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlpipe.tools.cli",
            "report",
            "--base",
            "HEAD~1",
            "--out",
            "report.md",
        ],
        cwd=two_commits,
        env=stage_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    text = (two_commits / "report.md").read_text()
    assert "| `train.epochs` | 10 | 20 |" in text
    assert "| accuracy | 0.9 | 0.95 | +0.05 |" in text
    assert "log_loss" not in text  # unchanged
    # the details file, which is not a DVC metric, is diffed from git; its headline metrics
    # are not repeated
    assert "<details><summary>2 other changed metrics" in text
    assert "| `metrics/details/evaluate.json` | valid.accuracy | 0.88 | 0.9 | +0.02 |" in text
    assert "| `metrics/details/evaluate.json` | per_class.cat.recall | 0.88 | 0.9 | +0.02 |" in text
    assert "[`plots/evaluate/roc.png`](plots/evaluate/roc.png) (changed)" in text
    assert "plots/evaluate/roc.csv" not in text


def test_report_against_the_same_commit_says_nothing_changed(two_commits):
    text = report.format_report("HEAD", *report.collect("HEAD", two_commits))
    assert "No param changed." in text
    assert "No test metric changed." in text
    assert "No plot changed." in text


def test_report_names_an_unknown_ref(two_commits):
    with pytest.raises(report.ReportError, match="git ref `origin/main` not found; fetch it"):
        report.collect("origin/main", two_commits)


def test_other_metrics_go_in_a_collapsed_table():
    metrics = {
        "metrics/evaluate.json": {
            "f1_macro": {"old": 0.5, "new": 0.25, "diff": -0.25},
            "per_class.cat.recall": {"old": None, "new": 1.0},
        },
        "metrics/train.json": {"best_epoch": {"old": 3, "new": 7, "diff": 4}},
    }
    plots = [("plots/evaluate/new.png", "added"), ("plots/evaluate/roc.csv", "changed")]
    text = report.format_report("main", {}, metrics, plots)
    assert "| f1_macro | 0.5 | 0.25 | -0.25 |" in text
    assert "<details><summary>2 other changed metrics" in text
    assert "| `metrics/evaluate.json` | per_class.cat.recall | - | 1 | added |" in text
    assert "| `metrics/train.json` | best_epoch | 3 | 7 | +4 |" in text
    assert "(plots/evaluate/new.png) (added)" in text
    assert "1 plot data files: `plots/evaluate/roc.csv` (changed)" in text
