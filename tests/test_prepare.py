import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, run_stage
from mlpipe import data
from mlpipe.config import DataParams


def labelled_frame(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "row_id": np.arange(n),
            "x": rng.normal(size=n),
            "label": np.where(np.arange(n) % 4 == 0, "rare", "common"),
        }
    )


def test_split_sizes_stratification_and_disjointness():
    frame = labelled_frame()
    splits = data.split_frame(frame, "label", "classification", DataParams(), seed=1)
    sizes = {name: len(part) for name, part in splits.items()}
    assert sizes == {"train": 140, "valid": 20, "test": 40}
    ids = [set(part["row_id"]) for part in splits.values()]
    assert set.union(*ids) == set(range(200))
    assert sum(map(len, ids)) == 200
    for part in splits.values():
        assert part["label"].eq("rare").mean() == pytest.approx(0.25, abs=0.01)


def test_split_is_seeded():
    frame = labelled_frame()
    first = data.split_frame(frame, "label", "classification", DataParams(), seed=1)
    again = data.split_frame(frame, "label", "classification", DataParams(), seed=1)
    other = data.split_frame(frame, "label", "classification", DataParams(), seed=2)
    assert first["test"]["row_id"].tolist() == again["test"]["row_id"].tolist()
    assert first["test"]["row_id"].tolist() != other["test"]["row_id"].tolist()


def test_regression_split_is_not_stratified():
    frame = labelled_frame().assign(y=lambda f: f["x"] * 2.5)
    splits = data.split_frame(frame, "y", "regression", DataParams(), seed=0)
    assert len(splits["test"]) == 40


@pytest.mark.parametrize(
    ("values", "task"),
    [
        (["a", "b", "a"], "classification"),
        ([True, False, True], "classification"),
        ([0, 1, 2, 1], "classification"),
        ([0.5, 1.25, 3.0], "regression"),
        (list(range(100)), "regression"),
    ],
)
def test_infer_task(values, task):
    assert data.infer_task(pd.Series(values)) == task


def test_digits_schema(digits):
    splits, schema = digits
    names = data.feature_names(schema)
    assert names[:2] == ["pixel_0_0", "pixel_0_1"] and len(names) == 64
    assert schema["target"] == "target"
    assert schema["task"] == "classification"
    assert schema["classes"] == list(range(10))
    assert sum(len(part) for part in splits.values()) == 1797


def test_missing_target_is_named():
    frame = labelled_frame()
    with pytest.raises(data.DataError, match="`price`"):
        data.select_target(frame, DataParams(target="price"), "label")


def test_task_param_overrides_inference():
    frame = labelled_frame().assign(count=np.arange(200) % 5)
    assert data.select_target(frame, DataParams(target="count"), "label") == (
        "count",
        "classification",
    )
    regression = DataParams(target="count", task="regression")
    assert data.select_target(frame, regression, "label") == ("count", "regression")


def test_regression_on_text_target_is_refused():
    frame = labelled_frame()
    with pytest.raises(data.DataError, match="not numeric"):
        data.select_target(frame, DataParams(task="regression"), "label")


def test_unknown_dataset_lists_choices():
    with pytest.raises(data.DataError, match="sklearn:digits"):
        data.load_source("sklearn:mnist")


def test_target_encoding_rejects_unseen_labels():
    schema = {"task": "classification", "classes": ["a", "b"], "target": "y"}
    assert data.encode_target(pd.Series(["b", "a"]), schema).tolist() == [1, 0]
    with pytest.raises(data.DataError, match="'c'"):
        data.encode_target(pd.Series(["a", "c"]), schema)


def test_stage_writes_splits_and_schema_without_importing_tensorflow(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: 3\n")
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['prepare', 'out']\n"
        f"runpy.run_path({str(ROOT / 'stages' / 'prepare.py')!r}, run_name='__main__')\n"
        "assert 'tensorflow' not in sys.modules, 'prepare imported tensorflow'\n"
        "assert 'keras' not in sys.modules, 'prepare imported keras'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "schema.json",
        "test.parquet",
        "train.parquet",
        "valid.parquet",
    ]
    assert len(pd.read_parquet(out / "test.parquet")) == 360


def test_stage_error_names_the_column_and_keeps_previous_outputs(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: 3\n")
    assert run_stage("prepare", "out", cwd=tmp_path).returncode == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}

    (tmp_path / "params.yaml").write_text("data:\n  target: price\n")
    result = run_stage("prepare", "out", cwd=tmp_path)
    assert result.returncode == 2
    assert "data.target: column `price` is not in sklearn:digits" in result.stderr
    assert "Traceback" not in result.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "params.yaml"]
