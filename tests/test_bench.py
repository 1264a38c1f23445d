"""The benchmark runs and writes well-formed results; its figures are not asserted here."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_quick_benchmark_writes_results(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, str(ROOT / "bench/bench.py"), "--quick", "--out", str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    for key in (
        "mlpipe_samples_per_s",
        "keras_fit_samples_per_s",
        "sklearn_samples_per_s",
        "ratio_vs_keras_fit",
        "ratio_vs_sklearn",
        "sgemm_fraction_bs2048",
    ):
        assert isinstance(results[key], float) and results[key] > 0, key
    assert results["ratio_vs_keras_fit"] == round(
        results["mlpipe_samples_per_s"] / results["keras_fit_samples_per_s"], 3
    )
    assert results["trainable_params"] == 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    assert "| 32 |" in (tmp_path / "results.md").read_text()
    digits = results["digits_valid_accuracy"]
    for path in ("mlpipe", "keras_fit"):
        assert len(digits[path]) == len(digits["seeds"])
        assert all(0.5 < accuracy <= 1 for accuracy in digits[path]), digits


@pytest.mark.slow
def test_streaming_benchmark_writes_results(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, str(ROOT / "bench/streaming.py"), "--rows", "20000"]
    command += ["--fit-rows", "20000", "--epochs", "2", "--out", str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "streaming.json").read_text())
    stages = results["stages"]
    names = ("prepare", "build", "lr_find", "train", "evaluate", "export")
    peaks = [stages[name]["peak_rss_gb"] for name in names]
    assert results["peak_rss_gb_20000_rows_streamed"] == max(peaks) > 0
    assert 0.5 < stages["test_accuracy"] <= 1
    rates = results["samples_per_s"]
    ratio = results["streamed_vs_in_memory"]
    assert ratio == round(rates["streamed"] / rates["in_memory"], 2) > 0
