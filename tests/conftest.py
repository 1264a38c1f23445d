"""Shared fixtures: tiny params and the digits splits, made in memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlpipe import dataset
from mlpipe.params import Params, parse_params
from mlpipe.schema import write_prepared as write_splits_and_schema

ROOT = Path(__file__).resolve().parents[1]

TINY: dict[str, Any] = {
    "seed": 7,
    "model": {"hidden_units": [64]},
    "train": {"epochs": 4, "early_stopping": {"patience": 2}},
}


def tiny_params(**sections) -> Params:
    raw = {key: dict(value) if isinstance(value, dict) else value for key, value in TINY.items()}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_params(raw)


def stage_env() -> dict:
    """The environment a stage subprocess runs in: this checkout's package first."""
    return {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def run_stage(stage: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `stages/<stage>.py` as DVC would, from `cwd`, with this checkout's package."""
    command = [sys.executable, str(ROOT / "stages" / f"{stage}.py"), *args]
    return subprocess.run(command, cwd=cwd, env=stage_env(), capture_output=True, text=True)


def write_prepared(out: Path, digits) -> Path:
    """Lay out `out` as the prepare stage writes it."""
    write_splits_and_schema(out, *digits)
    return out


@pytest.fixture(scope="session")
def digits():
    """(splits, schema) of the default dataset with tiny params."""
    params = tiny_params()
    frame, default_target = dataset.load_source(params.data)
    return dataset.prepare(frame, default_target, params.data, params.seed)


@pytest.fixture
def prepared_dir(tmp_path, digits) -> Path:
    """A folder laid out as the prepare stage writes it."""
    return write_prepared(tmp_path / "prepared", digits)


def predict_in_plain_keras(script: str, keras_file: Path, inputs: dict) -> np.ndarray:
    """Run `script` (which reads `keras_file` from argv[1] and the inputs as JSON on stdin, and
    prints its predictions as JSON) in a Python where mlpipe cannot be imported."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-I", "-c", script, str(keras_file)],
        input=json.dumps({name: values.tolist() for name, values in inputs.items()}),
        capture_output=True,
        text=True,
        env=env,
        cwd=keras_file.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return np.array(json.loads(result.stdout.splitlines()[-1]), dtype=np.float32)
