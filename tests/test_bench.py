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
    ratios = results["ratios"]
    assert set(ratios) == {
        "mlpipe_over_keras_fit_32",
        "mlpipe_over_keras_fit_256",
        "mlpipe_over_keras_fit_2048",
        "mlpipe_over_sklearn_32",
        "mlpipe_over_sklearn_256",
        "bf16_over_float32_2048",
        "bf16_over_keras_fit_2048",
        "gemm_bound_fraction_2048",
        "sgemm_fraction_bs2048",
    }
    for name, figure in ratios.items():
        runs = figure["runs"]
        assert len(runs) == 2 and all(r > 0 for r in runs), name  # --quick: two pairs
        assert figure["min"] == min(runs) and figure["max"] == max(runs), name
        assert figure["median"] == pytest.approx(sum(runs) / 2, abs=2e-3), name
    # each pair's ratio is that pair's own two rates, not a ratio of medians
    speeds = results["samples_per_s"]["32"]
    mlpipe, keras = speeds["mlpipe"]["runs"], speeds["keras_fit"]["runs"]
    per_pair = [m / k for m, k in zip(mlpipe, keras, strict=True)]
    assert ratios["mlpipe_over_keras_fit_32"]["runs"] == pytest.approx(per_pair, rel=1e-2)
    at_2048 = results["samples_per_s"]["2048"]
    bf16, float32 = at_2048["mixed_bfloat16"]["runs"], at_2048["mlpipe"]["runs"]
    per_pair = [b / f for b, f in zip(bf16, float32, strict=True)]
    assert ratios["bf16_over_float32_2048"]["runs"] == pytest.approx(per_pair, rel=1e-2)
    assert "mixed_bfloat16" in (tmp_path / "results.md").read_text()
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
