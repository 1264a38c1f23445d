import hashlib
import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import predict_in_plain_keras, stage_env, tiny_params
from mlpipe import features
from mlpipe.modeling import models
from mlpipe.schema import read_schema, read_splits, split_path
from mlpipe.serving import export
from mlpipe.serving.metadata import METADATA_FILE, read_metadata
from mlpipe.util import files


@pytest.fixture
def exported(prepared_dir, tmp_path):
    params = tiny_params(export={"onnx": True, "h5": True})
    schema = read_schema(prepared_dir)
    splits = read_splits(prepared_dir)
    model = models.build_model(params.model, schema, splits["train"])
    out = tmp_path / "export"
    with files.atomic_dir(out) as folder:
        meta = export.export_model(
            model, schema, params, split_path(prepared_dir, "train"), folder, splits["test"]
        )
    inputs = features.model_inputs(splits["train"].head(64), schema)
    return model, out, schema, inputs, meta


@pytest.mark.slow
def test_every_format_predicts_like_the_model_in_memory(exported):
    model, out, _, inputs, _ = exported
    expected = features.predict(model, inputs, 32)
    reloaded = models.load_model(out / export.KERAS_FILE)
    np.testing.assert_allclose(
        features.predict(reloaded, inputs, 32), expected, rtol=1e-5, atol=1e-6
    )
    served = tf.saved_model.load(str(out / export.SAVED_MODEL_DIR / "1"))
    # The serving signature takes the raw columns by name and names its outputs.
    got = served.serve({name: tf.constant(values) for name, values in inputs.items()})
    np.testing.assert_allclose(got["scores"].numpy(), expected, rtol=1e-5, atol=1e-6)
    onnx = export.onnx_predict(out / export.ONNX_FILE, inputs)
    np.testing.assert_allclose(onnx, expected, rtol=1e-4, atol=1e-5)
    h5 = keras.saving.load_model(out / export.H5_FILE, custom_objects=features.h5_custom_objects())
    np.testing.assert_allclose(features.predict(h5, inputs, 32), expected, rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in out.iterdir()) == [
        "metadata.json",
        "model.h5",
        "model.keras",
        "model.onnx",
        "saved_model",
    ]


def test_metadata_extends_the_schema_and_records_provenance(exported, prepared_dir):
    _, out, schema, _, written = exported
    meta = read_metadata(out / METADATA_FILE)
    assert meta == written
    # Every field of the schema, the features with what training learned of them
    bare = meta.model_dump(include=set(type(schema).model_fields) - {"features"})
    assert bare == schema.model_dump(exclude={"features"})
    assert [f.model_dump(exclude={"median", "categories"}) for f in meta.features] == [
        f.model_dump() for f in schema.features
    ]
    train = read_splits(prepared_dir)["train"]
    assert meta.features[10].median == train[schema.feature_names[10]].median()
    assert meta.classes == tuple(range(10)) and meta.task == "classification"
    assert meta.formats == ("keras", "saved_model", "onnx", "h5")
    assert {"tensorflow", "keras", "python", "mlpipe"} <= set(meta.versions)
    train_bytes = (prepared_dir / "train.parquet").read_bytes()
    assert meta.train_data_sha256 == hashlib.sha256(train_bytes).hexdigest()
    assert len(meta.params_sha256) == 64
    assert "git_commit" not in meta.model_dump()  # a commit would make every rerun's bytes differ
    raw = json.loads((out / METADATA_FILE).read_text())
    assert raw["features"][10]["median"] == meta.features[10].median
    assert "categories" not in raw["features"][10]
    assert raw["csv"] == {"na_values": list(meta.csv.na_values), "sep": None, "encoding": "utf-8"}


def test_formats_param_limits_what_is_written(prepared_dir, tmp_path):
    params = tiny_params(export={"formats": ["keras"]})
    schema = read_schema(prepared_dir)
    model = models.build_model(params.model, schema, read_splits(prepared_dir)["train"])
    (tmp_path / "out").mkdir()
    export.write_formats(model, schema, params.export, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [export.KERAS_FILE]


def test_failed_export_keeps_the_previous_one(tmp_path):
    out = tmp_path / "export"
    with files.atomic_dir(out) as tmp:
        (tmp / "metadata.json").write_text("old")
    with pytest.raises(RuntimeError), files.atomic_dir(out) as tmp:
        (tmp / "metadata.json").write_text("half")
        raise RuntimeError("disk full")
    assert (out / "metadata.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


PLAIN_KERAS = """
import json, sys
sys.modules["mlpipe"] = None  # importing mlpipe fails here, whatever is installed
import numpy as np
import keras
model = keras.saving.load_model(sys.argv[1], safe_mode=True)
inputs = {name: np.array(values, dtype="float32") for name, values in json.load(sys.stdin).items()}
print(json.dumps(model.predict(inputs, batch_size=32, verbose=0).tolist()))
"""


@pytest.mark.slow
def test_the_keras_file_loads_with_plain_keras_and_predicts_the_same(exported):
    model, out, _, inputs, _ = exported
    # A process where mlpipe cannot be imported: Keras alone must read the file.
    got = predict_in_plain_keras(PLAIN_KERAS, out / export.KERAS_FILE, inputs)
    np.testing.assert_array_equal(got, features.predict(model, inputs, 32))


@pytest.mark.slow
def test_saved_model_is_in_a_version_folder_with_named_outputs(exported):
    _, out, schema, inputs, _ = exported
    assert [p.name for p in (out / export.SAVED_MODEL_DIR).iterdir()] == ["1"]
    served = tf.saved_model.load(str(out / export.SAVED_MODEL_DIR / "1"))
    signature = served.signatures["serving_default"]
    assert sorted(signature.structured_input_signature[1]) == sorted(inputs)
    got = signature(**{name: tf.constant(values[:3]) for name, values in inputs.items()})
    assert sorted(got) == ["classes", "predicted_class", "scores"]
    assert got["scores"].shape == (3, 10)
    labels = [str(c).encode() for c in schema.classes]
    assert got["classes"].numpy().tolist() == [labels] * 3
    best = got["scores"].numpy().argmax(axis=1)
    assert got["predicted_class"].numpy().tolist() == [labels[i] for i in best]


EXPORT_AGAIN = """
import sys
from pathlib import Path
from mlpipe.modeling import models
from mlpipe.params import ExportParams
from mlpipe.schema import read_schema
from mlpipe.serving import export
out = Path(sys.argv[3])
out.mkdir()
model = models.load_model(sys.argv[1])
export.write_formats(model, read_schema(Path(sys.argv[2])), ExportParams(), out)
"""


@pytest.mark.slow
def test_two_processes_export_the_same_bytes(exported, prepared_dir, tmp_path):
    _, out, _, _, _ = exported
    for name in ("one", "two"):
        command = [
            sys.executable,
            "-c",
            EXPORT_AGAIN,
            str(out / export.KERAS_FILE),
            str(prepared_dir),
            str(tmp_path / name),
        ]
        result = subprocess.run(command, capture_output=True, text=True, env=stage_env())
        assert result.returncode == 0, result.stderr[-3000:]

    def contents(folder):
        return {
            str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()
        }

    one, two = contents(tmp_path / "one"), contents(tmp_path / "two")
    assert "saved_model/1/saved_model.pb" in one
    assert one == two
