"""bench/quality.py's categorical data set: built from California, deterministic."""

import importlib.util

import pandas as pd

from conftest import ROOT


def load_bench():
    spec = importlib.util.spec_from_file_location("quality", ROOT / "bench/quality.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_categorical_set_is_all_categories_and_the_same_every_time():
    bench = load_bench()
    frame = bench.categorical_frame()
    assert frame.shape == (20640, 11)
    assert all(pd.api.types.is_string_dtype(frame[c]) for c in frame.columns)
    assert frame["expensive"].value_counts().to_dict() == {"no": 10323, "yes": 10317}
    assert frame["median_income"].nunique() == 16
    assert 200 < frame["cell"].nunique() < 24 * 24  # the grid's occupied cells
    assert (frame["total_bedrooms"] == "").sum() == 207  # missing stays missing
    assert frame.equals(bench.categorical_frame())
    # Every piece of the ablation is a valid preset.
    for name, preset in bench.MLPIPE_MODELS.items():
        assert bench.parse_params({"seed": 0, **preset}).seed == 0, name
