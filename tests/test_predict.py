"""Bring your own CSV, train, export, and predict on new rows with `mlpipe predict`."""

import json
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest

from conftest import run_stage, stage_env
from mlpipe import MlpipeError, features
from mlpipe.modeling import models
from mlpipe.schema import read_schema
from mlpipe.serving import export, predict
from mlpipe.serving.metadata import ExportMetadata
from mlpipe.util.tables import DataError

# Every test but one reads what the stages wrote, run as subprocesses on the churn CSV.
pytestmark = pytest.mark.slow

STAGES = [
    ("prepare", ["prepared"]),
    ("build", ["prepared", "untrained", "summary.txt"]),
    (
        "lr_find",
        ["prepared", "untrained", "rate.json", "lr_find.json", "lr_find.csv", "lr_find.png"],
    ),
    (
        "train",
        [
            *("prepared", "untrained", "model", "train.json"),
            *("--dvclive", "live", "--tensorboard", "tb", "--learning-rate", "rate.json"),
        ],
    ),
    ("evaluate", ["prepared", "model", "evaluate.json", "details.json", "plots"]),
    ("export", ["prepared", "model", "export"]),
]


def churn_csv(n=400, seed=0) -> str:
    """Mixed types with gaps, made here: numbers (some missing or padded), text categories
    (some missing), a yes/no column, an id, and a boolean target that depends on them."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n)
    city = rng.choice(["paris", "lyon", "nice"], n)
    plan = rng.choice(["basic", "pro"], n)
    churn = (age > 50) ^ (city == "nice")
    lines = ["customer,age,monthly_fee,city,plan,churn"]
    for i in range(n):
        age_text = "NA" if i % 17 == 0 else f" {age[i]} "
        city_text = "" if i % 23 == 0 else city[i]
        fee = f"{rng.normal(30, 5):.2f}" if i % 11 else "?"
        lines.append(f"c{i:04d},{age_text},{fee},{city_text},{plan[i]},{churn[i]}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The pipeline's stages run, in order, on the churn CSV: what a user's first run does."""
    root = tmp_path_factory.mktemp("churn")
    (root / "churn.csv").write_text(churn_csv())
    params = {
        "seed": 3,
        "data": {"source": "churn.csv", "target": "churn", "id_column": "customer"},
        "model": {"hidden_units": [32]},
        "train": {"epochs": 40, "early_stopping": {"patience": 8}},
        "export": {"onnx": True},
    }
    (root / "params.yaml").write_text(json.dumps(params))
    for stage, args in STAGES:
        result = run_stage(stage, *args, cwd=root)
        assert result.returncode == 0, f"{stage}: {result.stderr}"
    return root


def mlpipe(*args, cwd) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mlpipe.tools.cli", *args]
    return subprocess.run(command, cwd=cwd, env=stage_env(), capture_output=True, text=True)


def test_mixed_csv_trains_and_the_schema_records_what_was_learned(project):
    schema = read_schema(project / "prepared")
    kinds = {f.name: f.kind for f in schema.features}
    assert kinds == {
        "age": "numeric",
        "monthly_fee": "numeric",
        "city": "categorical",
        "plan": "categorical",
    }
    assert schema.task == "classification" and schema.classes == (False, True)
    scores = json.loads((project / "evaluate.json").read_text())
    assert scores["accuracy"] >= 0.8
    meta = json.loads((project / "export" / "metadata.json").read_text())
    city = next(f for f in meta["features"] if f["name"] == "city")
    assert set(city["categories"]) == {"paris", "lyon", "nice", ""}
    age = next(f for f in meta["features"] if f["name"] == "age")
    train = pd.read_parquet(project / "prepared" / "train.parquet")
    assert age["median"] == train["age"].median()
    assert meta["id_column"] == "customer" and "onnx" in meta["formats"]


def test_predict_on_the_test_rows_equals_the_evaluate_stage(project):
    test = pd.read_parquet(project / "prepared" / "test.parquet")
    test.drop(columns="churn").assign(note="x").to_csv(project / "new.csv", index=False)
    result = mlpipe(
        "predict", "--model", "export", "--input", "new.csv", "--output", "out.csv", cwd=project
    )
    assert result.returncode == 0, result.stderr
    assert "ignoring columns the model does not use: ['note']" in result.stderr
    out = pd.read_csv(project / "out.csv")
    assert list(out.columns) == ["customer", "prediction", "proba_False", "proba_True"]
    assert out["customer"].tolist() == test["customer"].tolist()
    evaluated = pd.read_csv(project / "plots" / "confusion.csv")
    assert out["prediction"].tolist() == evaluated["predicted"].tolist()
    model = models.load_model_folder(project / "model")
    proba = features.predict(
        model, features.model_inputs(test, read_schema(project / "prepared")), 64
    )
    np.testing.assert_allclose(out["proba_True"], proba[:, 0], atol=1e-6)


def test_chunks_give_the_same_predictions_and_unseen_values_still_predict(project, tmp_path):
    rows = pd.DataFrame(
        {
            "age": [25, None, 70, 40, 33],
            "monthly_fee": [20.0, 30.0, None, 25.0, 31.0],
            "city": ["paris", "berlin", None, "nice", "lyon"],  # berlin: never seen
            "plan": ["pro", "basic", "basic", "enterprise", "pro"],
        }
    )
    rows.to_parquet(tmp_path / "new.parquet")
    model, meta = predict.load(project / "export")
    assert isinstance(meta, ExportMetadata)
    whole = predict.predict_file(model, meta, tmp_path / "new.parquet", tmp_path / "a.csv")
    chunked = predict.predict_file(
        model, meta, tmp_path / "new.parquet", tmp_path / "b.csv", chunk_rows=2, batch_size=1
    )
    assert whole == chunked == 5
    out, out_chunked = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    # Batches of 1 and of 5 run different float32 kernels: equal to rounding, not to the bit.
    pd.testing.assert_frame_equal(out, out_chunked, rtol=1e-5)
    assert out["prediction"].isin([True, False]).all()
    np.testing.assert_allclose(out["proba_False"] + out["proba_True"], 1.0, atol=1e-6)


def test_input_problems_name_the_column_and_row_and_write_nothing(project, tmp_path):
    model, meta = predict.load(project / "export")
    (tmp_path / "missing.csv").write_text("age,city,plan\n30,paris,pro\n")
    with pytest.raises(DataError, match=r"missing columns \['monthly_fee'\]"):
        predict.predict_file(model, meta, tmp_path / "missing.csv", tmp_path / "out.csv")
    lines = ["age,monthly_fee,city,plan"] + ["30,20,paris,pro"] * 5 + ["thirty,20,paris,pro"]
    (tmp_path / "junk.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="column `age` is numeric but row 6 holds 'thirty'"):
        predict.predict_file(model, meta, tmp_path / "junk.csv", tmp_path / "out.csv", chunk_rows=4)
    (tmp_path / "empty.csv").write_text("age,monthly_fee,city,plan\n")
    with pytest.raises(DataError, match="no data rows"):
        predict.predict_file(model, meta, tmp_path / "empty.csv", tmp_path / "out.csv")
    bad = {
        "inf.csv": (
            "\n".join([*lines[:3], "30,inf,paris,pro"]).encode(),
            r"inf\.csv: column `monthly_fee` holds inf in row 3 \(1 such rows\)",
        ),
        "latin1.csv": (
            "\n".join([*lines[:5], "30,20,orléans,pro"]).encode("latin-1"),
            r"line 6, column `city` is not valid utf-8 .*`mlpipe predict --encoding cp1252`",
        ),
        "ragged.csv": (
            "\n".join([*lines[:2], "30,20,paris,pro,extra"]).encode(),
            r"line 3 \('30,20,paris,pro,extra'\) has 5 fields where the header has 4",
        ),
    }
    for name, (data, message) in bad.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=message):
            predict.predict_file(model, meta, tmp_path / name, tmp_path / "out.csv", chunk_rows=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["empty.csv", "junk.csv", "missing.csv", *bad]
    )


def test_predict_reads_the_training_encoding_unless_told_otherwise(project, tmp_path):
    rows = "age,monthly_fee,city,plan\n30,20,paris,pro\n61,25,orléans,basic\n"
    (tmp_path / "w.csv").write_bytes(rows.encode("cp1252"))
    args = ("predict", "--model", str(project / "export"), "--input", str(tmp_path / "w.csv"))
    refused = mlpipe(*args, "--output", str(tmp_path / "a.csv"), cwd=project)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "line 3, column `city` is not valid utf-8" in refused.stderr
    done = mlpipe(*args, "--output", str(tmp_path / "b.csv"), "--encoding", "cp1252", cwd=project)
    assert done.returncode == 0, done.stderr
    assert len(pd.read_csv(tmp_path / "b.csv")) == 2
    meta = json.loads((project / "export" / "metadata.json").read_text())
    assert meta["csv"]["encoding"] == "utf-8"


def test_a_bare_keras_file_predicts_with_features_read_off_the_model(project, tmp_path):
    (tmp_path / "model.keras").write_bytes((project / "model" / "model.keras").read_bytes())
    model, schema = predict.load(tmp_path / "model.keras")
    assert schema.feature_names == ["age", "monthly_fee", "city", "plan"]
    assert [f.kind for f in schema.features] == ["numeric", "numeric", "categorical", "categorical"]
    assert schema.classes == (0, 1)
    pd.read_parquet(project / "prepared" / "test.parquet").to_csv(tmp_path / "t.csv", index=False)
    assert predict.predict_file(model, schema, tmp_path / "t.csv", tmp_path / "o.csv") > 0
    # Beside metadata.json of another format, the model is refused rather than guessed at
    (tmp_path / "metadata.json").write_text(json.dumps({"features": ["age"], "target": "churn"}))
    with pytest.raises(
        MlpipeError, match=r"metadata\.json: unreadable by this version of mlpipe \(features\.0"
    ):
        predict.load(tmp_path / "model.keras")


def test_unsafe_or_foreign_models_are_refused(tmp_path):
    inputs = keras.Input(shape=(1,), name="age")
    keras.Model(inputs, keras.layers.Lambda(lambda t: t + 1)(inputs)).save(tmp_path / "l.keras")
    (tmp_path / "x.csv").write_text("age\n1\n")
    result = mlpipe(
        "predict", "--model", "l.keras", "--input", "x.csv", "--output", "o.csv", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "refused: the model contains code" in result.stderr
    (tmp_path / "m.h5").write_bytes(b"\x89HDF")
    with pytest.raises(MlpipeError, match=r"only `\.keras` model files are loaded"):
        predict.load(tmp_path / "m.h5")
    with pytest.raises(MlpipeError, match=r"no model\.keras in this folder"):
        predict.load(tmp_path)


def test_exported_onnx_takes_raw_rows_too(project):
    test = pd.read_parquet(project / "prepared" / "test.parquet")
    inputs = features.model_inputs(test, read_schema(project / "prepared"))
    model = models.load_model(project / "export" / "model.keras")
    got = export.onnx_predict(project / "export" / export.ONNX_FILE, inputs)
    np.testing.assert_allclose(got, features.predict(model, inputs, 64), atol=1e-5)


PROBE = """
import sys
from mlpipe.tools import cli
try:
    cli.main(sys.argv[1:])
except SystemExit as exit:
    print("exit", exit.code, "tensorflow" in sys.modules)
"""


def test_inputs_and_output_are_checked_before_tensorflow_loads(project, tmp_path):
    """A missing file, a missing column or an output that is a folder fails at once, naming
    it, without loading TensorFlow or the model; no output is written."""
    (tmp_path / "few.csv").write_text("age,city\n30,paris\n")
    (tmp_path / "folder").mkdir()
    model = str(project / "export")
    cases = [
        (["--input", str(tmp_path / "nope.csv"), "--output", "o.csv"], "nope.csv: file not found"),
        (
            ["--input", str(tmp_path / "few.csv"), "--output", "o.csv"],
            "missing columns ['monthly_fee', 'plan']",
        ),
        (
            ["--input", str(tmp_path / "few.csv"), "--output", str(tmp_path / "folder")],
            "folder: is a folder; give the path of a CSV file to write",
        ),
    ]
    for args, message in cases:
        command = [sys.executable, "-c", PROBE, "predict", "--model", model, *args]
        result = subprocess.run(
            command, cwd=tmp_path, env=stage_env(), capture_output=True, text=True
        )
        assert result.stdout.strip() == "exit 2 False", result.stderr
        assert message in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["few.csv", "folder"]
    assert list((tmp_path / "folder").iterdir()) == []


def test_large_batches_predict_as_small_ones(project, tmp_path, capsys):
    test = pd.read_parquet(project / "prepared" / "test.parquet")
    test.to_csv(tmp_path / "rows.csv", index=False)
    model, meta = predict.load(project / "export")
    predict.predict_file(model, meta, tmp_path / "rows.csv", tmp_path / "big.csv")
    assert capsys.readouterr().err == ""  # no progress bar unless asked (on a terminal)
    test.to_parquet(tmp_path / "rows.parquet")
    predict.predict_file(
        model, meta, tmp_path / "rows.parquet", tmp_path / "bar.csv", progress=True
    )
    bar = capsys.readouterr().err
    assert "100%" in bar and " rows" in bar  # Parquet tells the total
    predict.predict_file(
        model, meta, tmp_path / "rows.csv", tmp_path / "small.csv", batch_size=7, chunk_rows=13
    )
    big, small = pd.read_csv(tmp_path / "big.csv"), pd.read_csv(tmp_path / "small.csv")
    assert big["prediction"].tolist() == small["prediction"].tolist()
    np.testing.assert_allclose(big["proba_True"], small["proba_True"], rtol=1e-5, atol=1e-7)
    # Written by pyarrow: labels as text, as pandas would write them
    assert (tmp_path / "big.csv").read_text().splitlines()[0] == (
        "customer,prediction,proba_False,proba_True"
    )
    assert set(big["prediction"].astype(str)) <= {"True", "False"}
