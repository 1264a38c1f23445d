"""Data in Parquet shards: a folder as data.source, split by hash into shards, statistics in a
streaming pass, and the stages reading the shards batch by batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import run_stage, tiny_params
from mlpipe import stream_stats
from mlpipe.dataset_stream import prepare_sharded
from mlpipe.features import numeric_stats, robust_stats, vocabulary
from mlpipe.schema import SPLITS, read_schema, write_record
from mlpipe.stream_stats import ShardStats
from mlpipe.util.paths import SCHEMA_FILE
from mlpipe.util.shards import ShardedSplit, is_sharded_source
from mlpipe.util.tables import DataError

N_FILES, ROWS_PER_FILE = 3, 2000


def shard_frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 3)).astype(np.float32)
    frame = pd.DataFrame({f"x{i}": x[:, i] for i in range(3)})
    frame["x2"] = frame["x2"].mask(rng.random(rows) < 0.1)  # missing values: imputed
    frame["color"] = rng.choice(["red", "green", "blue", "teal"], rows, p=[0.4, 0.3, 0.2, 0.1])
    frame["code"] = rng.integers(0, 5, rows)  # a category given as integers
    frame["rid"] = np.arange(rows) + seed * rows  # unique: tells the rows apart
    frame["label"] = np.where(
        x[:, 0] + x[:, 1] > 0.5, "yes", np.where(x[:, 0] < -0.5, "no", "maybe")
    )
    return frame


def write_source(folder: Path, files: int = N_FILES, rows: int = ROWS_PER_FILE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        shard_frame(rows, i).to_parquet(folder / f"part-{i}.parquet", index=False)
    return folder


def data_params(source: Path, **data):
    return tiny_params(
        data={"source": str(source), "target": "label", "categorical": ["code"], **data}
    )


def read_split(folder: Path, name: str) -> pd.DataFrame:
    return pd.concat(ShardedSplit.of(folder, name).frames(), ignore_index=True)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_source(tmp_path_factory.mktemp("source") / "raw")


@pytest.fixture(scope="module")
def prepared(source, tmp_path_factory) -> Path:
    params = data_params(source)
    out = tmp_path_factory.mktemp("prepared")
    schema, _ = prepare_sharded(params.data, params.seed, out)
    write_record(out / SCHEMA_FILE, schema)
    return out


def test_a_folder_or_glob_is_a_sharded_source(source):
    assert is_sharded_source(str(source))
    assert is_sharded_source(f"{source}/*.parquet")
    assert not is_sharded_source(str(source / "part-0.parquet"))
    assert not is_sharded_source("sklearn:digits")
    assert data_params(f"{source}/*.parquet").data.source.endswith("*.parquet")


def test_the_split_is_deterministic_and_puts_every_row_in_one_split(source, prepared, tmp_path):
    params = data_params(source)
    schema, sizes = prepare_sharded(params.data, params.seed, tmp_path)
    for name in SPLITS:
        first = sorted((prepared / name).glob("*.parquet"))
        again = sorted((tmp_path / name).glob("*.parquet"))
        assert [p.name for p in first] == [p.name for p in again] != []
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, again, strict=True))
    ids = {name: read_split(prepared, name)["rid"] for name in SPLITS}
    every = pd.concat(ids.values())
    assert sorted(every) == list(range(N_FILES * ROWS_PER_FILE))  # each row once
    assert sum(sizes.values()) == N_FILES * ROWS_PER_FILE
    assert schema.classes == ("maybe", "no", "yes")
    assert [f.kind for f in schema.features] == ["numeric"] * 3 + ["categorical"] * 2 + ["numeric"]


def test_another_seed_splits_otherwise(source, prepared, tmp_path):
    params = data_params(source)
    prepare_sharded(params.data, params.seed + 1, tmp_path)
    assert set(read_split(tmp_path, "test")["rid"]) != set(read_split(prepared, "test")["rid"])


def test_each_class_is_split_in_the_asked_proportions(source, prepared):
    """Stratified in expectation: within 0.04 of each share for classes of ~2,000 rows (over
    four binomial standard deviations)."""
    data = data_params(source).data
    labels = {name: read_split(prepared, name)["label"] for name in SPLITS}
    total = pd.concat(labels.values()).value_counts()
    assert total.min() > 1000
    for name, share in (("test", data.test_size), ("valid", data.valid_size)):
        fractions = labels[name].value_counts() / total
        assert (fractions - share).abs().max() < 0.04, fractions


def test_an_id_column_keeps_rows_of_one_id_together(tmp_path):
    frame = shard_frame(3000, 0).assign(user=lambda f: f["rid"] % 500)
    (tmp_path / "raw").mkdir()
    frame.to_parquet(tmp_path / "raw" / "a.parquet", index=False)
    params = data_params(tmp_path / "raw", id_column="user")
    prepare_sharded(params.data, params.seed, tmp_path / "out")
    users = [set(read_split(tmp_path / "out", name)["user"]) for name in SPLITS]
    assert sum(len(u) for u in users) == 500  # every user in exactly one split


def test_streamed_statistics_match_the_in_memory_ones(prepared):
    """Medians within 0.5% of the rows in rank; means and standard deviations exact given
    them; vocabularies exact."""
    train = read_split(prepared, "train")
    stats = ShardStats(ShardedSplit.of(prepared, "train"))
    names = ["x0", "x1", "x2"]
    streamed = stats.numeric_stats(names)
    # x2's missing values take the median: exact means and deviations given that median
    imputed = train.fillna({"x2": np.float32(streamed["median"][2])})
    exact = numeric_stats(imputed, names)
    np.testing.assert_allclose(streamed["mean"], exact["mean"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(streamed["std"], exact["std"], rtol=1e-6)
    for name, median in zip(names, streamed["median"], strict=True):
        present = train[name].dropna().to_numpy(dtype=np.float64)
        assert abs((present < median).mean() - 0.5) < 0.005
    for name in ("color", "code"):
        assert stats.vocabulary(name) == vocabulary(train, name)


def test_streamed_robust_statistics_match_the_in_memory_ones(prepared):
    """model.numeric_encoding robust and periodic: the quartiles from the t-digest, within
    0.5% of the rows in rank of the exact ones."""
    train = read_split(prepared, "train")
    names = ["x0", "x1", "x2"]
    streamed = ShardStats(ShardedSplit.of(prepared, "train")).robust_stats(names)
    exact = robust_stats(train, names)
    assert streamed["mean"] == streamed["median"]  # centred on the median
    for i, name in enumerate(names):
        present = np.sort(train[name].dropna().to_numpy(dtype=np.float64))
        rank = np.searchsorted(present, streamed["median"][i]) / len(present)
        assert abs(rank - 0.5) < 0.005, name
        assert streamed["std"][i] == pytest.approx(exact["std"][i], rel=0.02), name


def test_streamed_quantiles_come_from_a_sample_of_every_kth_row(prepared, monkeypatch):
    """model.numeric_encoding quantile: exact on a split of at most QUANTILE_SAMPLE rows, from
    every k-th row of a larger one."""
    train = read_split(prepared, "train")
    levels = [0.0, 0.1, 0.25, 0.5, 0.9, 1.0]
    stats = ShardStats(ShardedSplit.of(prepared, "train"))
    for name, quantiles in zip(["x0", "x1"], stats.quantiles(["x0", "x1"], levels), strict=True):
        present = train[name].dropna().to_numpy(dtype=np.float64)
        np.testing.assert_allclose(quantiles, np.quantile(present, levels))
    monkeypatch.setattr(stream_stats, "QUANTILE_SAMPLE", len(train) // 3)
    for name, quantiles in zip(["x0", "x1"], stats.quantiles(["x0", "x1"], levels), strict=True):
        present = np.sort(train[name].dropna().to_numpy(dtype=np.float64))
        ranks = np.searchsorted(present, quantiles[1:-1]) / len(present)
        assert np.abs(ranks - levels[1:-1]).max() < 0.03, name


def test_an_empty_folder_is_refused(tmp_path):
    (tmp_path / "raw").mkdir()
    params = data_params(tmp_path / "raw")
    with pytest.raises(DataError, match=r"holds no Parquet files"):
        prepare_sharded(params.data, params.seed, tmp_path / "out")


def test_files_whose_columns_differ_are_refused_naming_the_file(tmp_path):
    source = write_source(tmp_path / "raw", files=2, rows=50)
    odd = shard_frame(50, 9).astype({"x1": "float64"})
    odd.to_parquet(source / "part-9.parquet", index=False)
    params = data_params(source)
    with pytest.raises(DataError, match=r"column `x1` is double in .*part-9.parquet but float"):
        prepare_sharded(params.data, params.seed, tmp_path / "out")
    shard_frame(50, 9).drop(columns="code").to_parquet(source / "part-9.parquet", index=False)
    with pytest.raises(DataError, match=r"part-9.parquet has other columns .*missing \['code'\]"):
        prepare_sharded(params.data, params.seed, tmp_path / "out")


def test_bad_values_are_refused_naming_the_file_and_row(tmp_path):
    source = write_source(tmp_path / "raw", files=2, rows=50)
    frame = shard_frame(50, 1)
    frame.loc[7, "x0"] = np.inf
    frame.to_parquet(source / "part-1.parquet", index=False)
    params = data_params(source)
    with pytest.raises(DataError, match=r"part-1.parquet: column `x0` holds inf in row 8"):
        prepare_sharded(params.data, params.seed, tmp_path / "out")
    frame.loc[7, "x0"], frame.loc[3, "label"] = 0.0, None
    frame.to_parquet(source / "part-1.parquet", index=False)
    with pytest.raises(DataError, match=r"part-1.parquet: target `label` is missing in rows \[4\]"):
        prepare_sharded(params.data, params.seed, tmp_path / "out")


def test_one_epoch_of_streamed_batches_holds_every_training_row_once(prepared):
    """And the order of epoch k depends on (seed, k) alone, as a resumed run needs."""
    from mlpipe.features import build_preprocessor
    from mlpipe.training.streamed import StreamedSplits

    schema = read_schema(prepared)
    splits = {s: ShardedSplit.of(prepared, s) for s in ("train", "valid")}
    stats = ShardStats(splits["train"])
    data = StreamedSplits(build_preprocessor(schema, stats, clip=None), splits, schema, ["out"])
    numeric = [f.name for f in schema.features if f.kind == "numeric"]
    column = numeric.index("rid")  # numeric columns come first, in order
    learned = stats.numeric_stats(numeric)
    mean, std = learned["mean"][column], learned["std"][column]

    def rows_of(epoch):
        batches = data.batches(64, seed=1, first_epoch=epoch, epochs=epoch + 1)
        x = np.concatenate([x.numpy()[:, column] for x, _ in batches.dataset])
        return np.rint(x.astype(np.float64) * std + mean).astype(int)

    first, second, again = rows_of(0), rows_of(1), rows_of(0)
    assert sorted(first) == sorted(read_split(prepared, "train")["rid"])
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, second)
    assert len(data.validation(64)) == -(-len(splits["valid"]) // 64)


@pytest.mark.slow
def test_the_stages_run_on_a_folder_of_parquet_files(tmp_path):
    """prepare -> build -> lr_find -> train -> evaluate -> export -> baselines, as DVC runs them."""
    write_source(tmp_path / "data" / "raw" / "big", rows=1000)
    params = {
        "seed": 3,
        "data": {"source": "data/raw/big", "target": "label", "categorical": ["code"]},
        "model": {"hidden_units": [16]},
        "train": {"epochs": 6, "batch_size": 64, "optimizer": {"learning_rate": 0.01}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    commands = [
        ("prepare", "data/prepared", "--raw", "data/raw"),
        ("build", "data/prepared", "models/untrained", "models/summary.txt"),
        (
            "lr_find",
            "data/prepared",
            "models/untrained",
            "models/learning_rate.json",
            "lr.json",
            "lr.csv",
            "lr.png",
        ),
        (
            "train",
            "data/prepared",
            "models/untrained",
            "models/model",
            "train.json",
            "--dvclive",
            "live",
            "--tensorboard",
            "tb",
            "--learning-rate",
            "models/learning_rate.json",
        ),
        ("evaluate", "data/prepared", "models/model", "evaluate.json", "details.json", "plots"),
        ("export", "data/prepared", "models/model", "models/export"),
        ("baselines", "data/prepared", "baselines.json"),
    ]
    for stage, *args in commands:
        done = run_stage(stage, *args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    shards = sorted((tmp_path / "data" / "prepared" / "train").glob("part-*.parquet"))
    assert [p.name for p in shards] == ["part-00000.parquet"]
    scores = json.loads((tmp_path / "evaluate.json").read_text())
    assert scores["accuracy"] > 0.7  # the labels follow x0 + x1: learnable
    assert json.loads((tmp_path / "train.json").read_text())["epochs_run"] == 6
    meta = json.loads((tmp_path / "models" / "export" / "metadata.json").read_text())
    assert meta["features"][3]["categories"] == ["red", "green", "blue", "teal"]
    assert json.loads((tmp_path / "baselines.json").read_text()) == {}

    # A number is needed where the range test would load the training split
    params["train"]["optimizer"]["learning_rate"] = "auto"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = run_stage(*commands[2], cwd=tmp_path)
    assert done.returncode == 2
    assert "Set train.optimizer.learning_rate to a number" in done.stderr
