import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, run_stage
from mlpipe import dataset
from mlpipe.params import CsvParams, DataParams
from mlpipe.schema import Schema, read_schema, read_splits, write_prepared
from mlpipe.serving.metadata import ExportMetadata, LearnedFeature
from mlpipe.util.tables import iter_table, read_table, to_numeric


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
    splits = dataset.split_frame(frame, "label", "classification", DataParams(), seed=1)
    sizes = {name: len(part) for name, part in splits.items()}
    assert sizes == {"train": 140, "valid": 20, "test": 40}
    ids = [set(part["row_id"]) for part in splits.values()]
    assert set.union(*ids) == set(range(200))
    assert sum(map(len, ids)) == 200
    for part in splits.values():
        assert part["label"].eq("rare").mean() == pytest.approx(0.25, abs=0.01)


def test_split_is_seeded():
    frame = labelled_frame()
    first = dataset.split_frame(frame, "label", "classification", DataParams(), seed=1)
    again = dataset.split_frame(frame, "label", "classification", DataParams(), seed=1)
    other = dataset.split_frame(frame, "label", "classification", DataParams(), seed=2)
    assert first["test"]["row_id"].tolist() == again["test"]["row_id"].tolist()
    assert first["test"]["row_id"].tolist() != other["test"]["row_id"].tolist()


def test_regression_split_is_not_stratified():
    frame = labelled_frame().assign(y=lambda f: f["x"] * 2.5)
    splits = dataset.split_frame(frame, "y", "regression", DataParams(), seed=0)
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
    assert dataset.infer_task(pd.Series(values)) == task


def test_digits_schema(digits):
    splits, schema = digits
    names = schema.feature_names
    assert names[:2] == ["pixel_0_0", "pixel_0_1"] and len(names) == 64
    assert schema.target == "target"
    assert schema.task == "classification"
    assert schema.classes == tuple(range(10))
    assert sum(len(part) for part in splits.values()) == 1797


def test_missing_target_is_named():
    frame = labelled_frame()
    with pytest.raises(dataset.DataError, match="`price`"):
        dataset.select_target(frame, DataParams(target="price"), "label")


def test_task_param_overrides_inference():
    frame = labelled_frame().assign(count=np.arange(200) % 5)
    assert dataset.select_target(frame, DataParams(target="count"), "label") == (
        "count",
        "classification",
    )
    regression = DataParams(target="count", task="regression")
    assert dataset.select_target(frame, regression, "label") == ("count", "regression")


def test_regression_on_text_target_is_refused():
    frame = labelled_frame()
    with pytest.raises(dataset.DataError, match="not numeric"):
        dataset.select_target(frame, DataParams(task="regression"), "label")


def test_unknown_dataset_lists_choices():
    with pytest.raises(dataset.DataError, match="sklearn:digits"):
        dataset.load_source(DataParams.model_construct(source="sklearn:mnist"))


@pytest.mark.slow
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


@pytest.mark.slow
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


# Users' own files


def write_params(folder, **data_params):
    (folder / "params.yaml").write_text(json.dumps({"seed": 1, "data": data_params}))


def mixed_csv(n=60) -> str:
    """A messy but valid CSV: padded cells, several missing-value markers, a text column."""
    lines = ["id; size ;colour;flag;label"]
    for i in range(n):
        size = ["NA", "?", ""][i % 3] if i % 10 == 0 else f" {i * 1.5} "
        colour = ["red", "blue", " green "][i % 3] if i % 7 else "N/A"
        lines.append(f"{i};{size};{colour};{'true' if i % 2 else 'false'};{i % 4 == 0}")
    return "\n".join(lines) + "\n"


def test_csv_is_read_like_a_person_would_read_it(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text(mixed_csv())
    frame = read_table(path, CsvParams())
    assert list(frame.columns) == ["id", "size", "colour", "flag", "label"]  # `;` was sniffed
    assert frame["size"].dtype == "float64" and frame["size"].isna().sum() == 6
    assert frame["size"][1] == 1.5
    assert set(frame["colour"].dropna()) == {"red", "blue", "green"}
    assert frame["colour"].isna().sum() == 9
    assert frame["flag"].dtype == bool and frame["label"].dtype == bool
    with pytest.raises(dataset.DataError, match="`size` is numeric but row 2 holds 'x'"):
        to_numeric(pd.Series(["1", "x"], name="size"), "f.csv")


def test_chunks_for_prediction_hold_the_values_prepare_reads(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text(mixed_csv(60) + "60;1e3;red;yes;true\n")
    whole = read_table(path, CsvParams())
    chunks = list(iter_table(path, CsvParams(), 7, numeric=["id", "size", "flag"]))
    assert [len(c) for c in chunks] == [7] * 8 + [5]
    frame = pd.concat(chunks, ignore_index=True)
    for name in ["id", "size", "flag"]:  # flag holds true/false words: 1 and 0
        np.testing.assert_array_equal(
            to_numeric(frame[name], "f"), to_numeric(whole[name], "f"), err_msg=name
        )
    assert frame["size"].dtype == "float64" and frame["size"].isna().sum() == 6
    assert frame["colour"].tolist() == whole["colour"].tolist()


def test_leading_blank_lines_and_a_header_longer_than_the_sniffed_bytes(tmp_path):
    (tmp_path / "blank.csv").write_text("\n\nx,y\n1,a\n")
    assert read_table(tmp_path / "blank.csv", CsvParams()).to_dict("list") == {
        "x": [1],
        "y": ["a"],
    }
    names = [f"column_number_{i}" for i in range(8000)]  # a 150 KB header
    (tmp_path / "wide.csv").write_text(",".join(names) + "\n" + ",".join(["1"] * 8000) + "\n")
    assert list(read_table(tmp_path / "wide.csv", CsvParams()).columns) == names


def test_byte_order_mark_encodings_and_markers_are_read_as_configured(tmp_path):
    (tmp_path / "bom.csv").write_bytes("\ufeffmean_radius,y\n1.5,a\n".encode())
    assert list(read_table(tmp_path / "bom.csv", CsvParams()).columns) == ["mean_radius", "y"]
    (tmp_path / "w.csv").write_bytes("x;ville\n1;Orléans\n2;Besançon\n".encode("cp1252"))
    frame = read_table(tmp_path / "w.csv", CsvParams(encoding="cp1252"))
    assert frame["ville"].tolist() == ["Orléans", "Besançon"]
    (tmp_path / "inf.csv").write_text("x,y\n1,a\ninf,b\n -inf ,a\n")
    params = DataParams(source=str(tmp_path / "inf.csv"), csv={"na_values": ["", "inf", "-inf"]})
    frame, _ = dataset.load_source(params)
    assert frame["x"].tolist()[0] == 1 and frame["x"].isna().tolist() == [False, True, True]


def test_target_map_renames_labels_of_every_file_before_the_checks(tmp_path):
    (tmp_path / "train.csv").write_text("x,y\n" + "".join(f"{i},{i % 2}K\n" for i in range(20)))
    (tmp_path / "test.csv").write_text("x,y\n" + "".join(f"{i},{i % 2}K.\n" for i in range(6)))
    params = DataParams(source=str(tmp_path / "train.csv"), test_source=str(tmp_path / "test.csv"))
    params = params.model_copy(update={"target": "y"})
    with pytest.raises(dataset.DataError, match=r"test\.csv: the test rows have target `y` labels"):
        dataset.prepare(*dataset.load_source(params), params, 0, dataset.load_test_source(params))
    mapped = params.model_copy(update={"target_map": {"0K.": "0K", "1K.": "1K"}})
    splits, schema = dataset.prepare(
        *dataset.load_source(mapped), mapped, 0, dataset.load_test_source(mapped)
    )
    assert schema.classes == ("0K", "1K")
    assert splits["test"]["y"].tolist() == ["0K", "1K"] * 3


def test_file_source_is_described_with_kinds_and_roles(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text(mixed_csv())
    params = DataParams(source=str(path), target="label", id_column="id", categorical=["flag"])
    frame, default_target = dataset.load_source(params)
    splits, schema = dataset.prepare(frame, default_target, params, seed=0)
    kinds = {f.name: f.kind for f in schema.features}
    assert kinds == {"size": "numeric", "colour": "categorical", "flag": "categorical"}
    assert schema.task == "classification" and schema.classes == (False, True)
    assert schema.id_column == "id"
    assert sum(map(len, splits.values())) == 60


def test_schema_file_keeps_its_layout_and_reads_back_equal(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text(mixed_csv())
    params = DataParams(source=str(path), target="label", id_column="id", categorical=["flag"])
    splits, schema = dataset.prepare(*dataset.load_source(params), params, seed=0)
    write_prepared(tmp_path / "out", splits, schema)
    feature = {"name": "size", "input": "size", "kind": "numeric", "dtype": "float64"}
    expected = {
        "classes": [False, True],
        "features": [
            feature,
            {**feature, "name": "colour", "input": "colour", "kind": "categorical", "dtype": "str"},
            {**feature, "name": "flag", "input": "flag", "kind": "categorical", "dtype": "bool"},
        ],
        "id_column": "id",
        "target": "label",
        "target_scale": None,
        "task": "classification",
        "warnings": [],
        "weight_column": None,
    }
    written = (tmp_path / "out" / "schema.json").read_bytes()
    assert written == (json.dumps(expected, indent=2, sort_keys=True) + "\n").encode()
    assert read_schema(tmp_path / "out") == schema
    assert read_splits(tmp_path / "out")["test"].equals(splits["test"])


@pytest.mark.parametrize("classes", [(False, True), (0, 1, 2), ("0", "1"), (0.5, 1.5)])
def test_class_labels_keep_their_type(tmp_path, classes):
    schema = Schema(features=(), target="y", task="classification", classes=classes)
    write_prepared(tmp_path, {}, schema)
    again = read_schema(tmp_path)
    assert again.classes == classes
    assert [type(c) for c in again.classes] == [type(c) for c in classes]


def test_target_scale_divides_a_regression_target_and_is_recorded(tmp_path):
    frame = pd.DataFrame({"x": np.arange(50.0), "price": np.arange(50.0) * 100_000 + 50_000})
    params = DataParams(target="price", target_scale=100_000)
    splits, schema = dataset.prepare(frame, None, params, seed=0)
    assert schema.target_scale == 100_000 and schema.task == "regression"
    for part in splits.values():
        np.testing.assert_allclose(part["price"], part["x"] + 0.5)
    test = frame.head(5)  # a separate test file is divided too
    parts, _ = dataset.prepare(frame, None, params, seed=0, test=test)
    np.testing.assert_allclose(parts["test"]["price"], [0.5, 1.5, 2.5, 3.5, 4.5])
    with pytest.raises(dataset.DataError, match=r"data\.target_scale divides a regression target"):
        dataset.prepare(labelled_frame(), None, DataParams(target="label", target_scale=10), seed=0)


def test_features_include_and_exclude(tmp_path):
    frame = labelled_frame().assign(z=1.0)
    only = DataParams(target="label", features={"include": ["x"]})
    assert dataset.feature_columns(frame, only, "label") == ["x"]
    without = DataParams(target="label", features={"exclude": ["z"]}, id_column="row_id")
    assert dataset.feature_columns(frame, without, "label") == ["x"]
    assert dataset.input_names(["a b", "a-b", "1st", ""]) == ["a_b", "a_b_2", "f_1st", "column"]


def test_data_own_split_column_and_test_file(tmp_path):
    frame = labelled_frame().assign(part=["test" if i % 5 == 0 else "train" for i in range(200)])
    params = DataParams(source="t.csv", split_column="part")
    splits = dataset.split_frame(frame, "label", "classification", params, seed=0)
    assert len(splits["test"]) == 40 and set(splits["test"]["row_id"] % 5) == {0}
    assert len(splits["valid"]) == round(160 * 0.1)
    bad = frame.assign(part="holdout")
    with pytest.raises(dataset.DataError, match="row 1 holds 'holdout'; use train, valid or test"):
        dataset.split_frame(bad, "label", "classification", params, seed=0)
    (tmp_path / "test.csv").write_text(labelled_frame(30, seed=5).to_csv(index=False))
    with_test = DataParams(source="t.csv", test_source=str(tmp_path / "test.csv"))
    test = dataset.load_test_source(with_test)
    splits, _ = dataset.prepare(frame.drop(columns="part"), "label", with_test, 0, test)
    assert len(splits["test"]) == 30 and len(splits["train"]) + len(splits["valid"]) == 200
    with pytest.raises(dataset.DataError, match=r"test.csv: columns \['x'\] are missing"):
        dataset.prepare(frame.drop(columns="part"), "label", with_test, 0, test.drop(columns="x"))


VALID_ROWS = "1,a\n2,b\n" * 5
BAD_INPUTS = {
    "empty file": ("", {}, "bad.csv: the file is empty"),
    "header only": ("x,y\n", {}, "bad.csv: no data rows"),
    "missing target": ("x,y\n" + VALID_ROWS, {"target": "price"}, "column `price` is not in"),
    "target with gaps": (
        "x,y\n" + "1,a\n2,\n" * 5,
        {},
        r"target `y` is missing in 5 rows \(rows \[2, 4, 6, 8, 10\]",
    ),
    "single class": ("x,y\n" + "1,a\n" * 9, {}, r"has a single class \('a'\)"),
    "rare class": ("x,y\n" + "1,a\n" * 20 + "2,b\n2,b\n", {}, r"fewer than 3 rows \('b': 2\)"),
    "junk in numeric": (
        "x,y\n" + "1,a\n2,b\n" * 5 + "oops,a\n",
        {"numeric": ["x"]},
        "column `x` is numeric but row 11 holds 'oops'",
    ),
    "duplicate names": ("x,x,y\n1,2,a\n", {}, r"duplicate column names \['x'\]"),
    "absent feature": (
        "x,y\n" + VALID_ROWS,
        {"features": {"include": ["x", "w"]}},
        r"\['w'\] are not",
    ),
    # The file is not what it says: every case names the file, the line or column, and the fix.
    "latin-1 text": (
        ("x,y\n" + VALID_ROWS + "3,caf\xe9\n").encode("latin-1"),
        {},
        r"line 12, column `y` is not valid utf-8 \('3,café'\); the file looks like cp1252.*"
        r"Set data\.csv\.encoding: cp1252",
    ),
    "utf-16 text": (
        ("x,y\n" + VALID_ROWS).encode("utf-16"),
        {},
        r"the file is UTF-16 text .*set data\.csv\.encoding: utf-16",
    ),
    "random bytes": (
        np.random.default_rng(0).bytes(2000),
        {},
        r"not a text table: it looks like binary data \(\d+ control bytes",
    ),
    "xlsx renamed": (
        b"PK\x03\x04" + bytes(200),
        {},
        r"not a text table: it looks like a ZIP archive, as an Excel \.xlsx workbook is: save "
        "the sheet as CSV",
    ),
    "parquet renamed": (
        b"PAR1" + bytes(200),
        {},
        r"not a text table: it looks like a Parquet file: give it a \.parquet suffix",
    ),
    "ragged row": (
        "x,y\n" + VALID_ROWS + "1,a,b\n",
        {},
        r"line 12 \('1,a,b'\) has 3 fields where the header has 2 .*quote fields that contain "
        r"',' .*or set data\.csv\.sep",
    ),
    "inf in numeric": (
        "x,y\n" + VALID_ROWS + "inf,a\n-inf,b\n",
        {},
        r"column `x` holds -inf, inf in 2 rows \(rows 11, 12\).*list them as written "
        r"\(e\.g\. inf\) in data\.csv\.na_values",
    ),
    "beyond float32": (
        "x,y\n" + VALID_ROWS + "1e39,a\n",
        {},
        r"column `x` holds 1e\+39 in 1 rows \(rows 11\): infinite, or beyond float32",
    ),
    "test labels unseen in training": (
        "x,y,part\n"
        + "1,a,train\n2,b,train\n" * 5
        + "1,a,valid\n2,b,valid\n"
        + "3,a.,test\n4,b,test\n5,a.,test\n",
        {"split_column": "part"},
        r"bad\.csv: the test rows of data\.split_column `part` have target `y` labels that no "
        r"training row has: 'a\.' \(2 rows\).*data\.target_map \(e\.g\. \{'a\.': 'a'\}\)",
    ),
}


@pytest.fixture(scope="module")
def good_outputs(tmp_path_factory):
    """What prepare writes for a good file: the outputs a bad file must leave in place."""
    folder = tmp_path_factory.mktemp("good")
    (folder / "good.csv").write_text(labelled_frame().to_csv(index=False))
    write_params(folder, source="good.csv", target="label")
    assert run_stage("prepare", "out", cwd=folder).returncode == 0
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_file_fails_naming_the_problem_and_keeps_previous_outputs(tmp_path, good_outputs, case):
    text, settings, message = BAD_INPUTS[case]
    shutil.copy(good_outputs / "good.csv", tmp_path)
    shutil.copytree(good_outputs / "out", tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}

    if isinstance(text, bytes):
        (tmp_path / "bad.csv").write_bytes(text)
    else:
        (tmp_path / "bad.csv").write_text(text)
    write_params(tmp_path, source="bad.csv", **{"target": "y", **settings})
    result = run_stage("prepare", "out", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert "bad.csv" in result.stderr and "Traceback" not in result.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bad.csv",
        "good.csv",
        "out",
        "params.yaml",
    ]


def exported_metadata(kinds: dict[str, str], target: str) -> str:
    """metadata.json as the export stage writes it, for a model trained on features `kinds`."""
    return ExportMetadata(
        features=tuple(LearnedFeature(name=n, input=n, kind=k) for n, k in kinds.items()),
        target=target,
        task="classification",
        classes=(0, 1),
        api="sequential",
        outputs=("output",),
        csv=CsvParams(),
        formats=("keras",),
        versions={},
        params_sha256="0" * 64,
        params_sections=("data",),
        train_data_sha256="0" * 64,
    ).model_dump_json()


@pytest.mark.slow
def test_suspicious_data_is_warned_about_not_refused(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=100),
            "same": 1.0,
            "copy": np.arange(100) % 2,
            "dup": np.repeat(np.arange(10), 10).astype(float),
            "y": np.arange(100) % 2,
        }
    )
    frame.loc[50:, "x"] = frame.loc[:49, "x"].to_numpy()  # rows 50.. repeat rows 0..49
    frame.loc[50:, "dup"] = frame.loc[:49, "dup"].to_numpy()
    frame.to_csv(tmp_path / "d.csv", index=False)
    kinds = {"x": "categorical", "dup": "numeric", "gone": "numeric"}
    (tmp_path / "meta.json").write_text(exported_metadata(kinds, "z"))
    write_params(tmp_path, source="d.csv", target="y")
    result = run_stage("prepare", "out", "--previous", "meta.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "constant in the training split, so useless as features: ['same']" in result.stderr
    assert "test rows also appear, identical, in the training split" in result.stderr
    assert "feature `copy` is identical to the target: a leak" in result.stderr
    assert "features no longer present ['gone']" in result.stderr
    assert "new features ['copy', 'same']" in result.stderr
    assert "features whose kind changed ['x']" in result.stderr
    assert "target `z` is now `y`" in result.stderr
    schema = read_schema(tmp_path / "out")
    assert len(schema.warnings) == 4

    # Metadata this version cannot read is reported, and the features are not compared
    (tmp_path / "meta.json").write_text(json.dumps({"features": ["x", "gone"], "target": "y"}))
    result = run_stage("prepare", "out", "--previous", "meta.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "features not compared with the exported model's: meta.json: unreadable" in result.stderr
    assert len(read_schema(tmp_path / "out").warnings) == 3
