import hashlib
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_params
from mlpipe import dataset, features
from mlpipe.modeling import models
from mlpipe.serving import export
from mlpipe.util import files


@pytest.fixture
def exported(prepared_dir, tmp_path):
    params = tiny_params(export={"onnx": True, "h5": True})
    schema = dataset.read_schema(prepared_dir)
    train = dataset.read_splits(prepared_dir)["train"]
    inputs = dataset.model_inputs(train.head(64), schema)
    model = models.build_model(params.model, schema, train)
    out = tmp_path / "export"
    with files.atomic_dir(out) as tmp:
        export.write_formats(model, params.export, tmp, inputs)
        files.write_json(
            tmp / export.METADATA_FILE,
            export.metadata(schema, params, prepared_dir / "train.parquet", model),
        )
    return model, out, schema, inputs


@pytest.mark.slow
def test_every_format_predicts_like_the_model_in_memory(exported):
    model, out, _, inputs = exported
    expected = features.predict(model, inputs, 32)
    reloaded = models.load_model(out / export.KERAS_FILE)
    np.testing.assert_allclose(
        features.predict(reloaded, inputs, 32), expected, rtol=1e-5, atol=1e-6
    )
    served = tf.saved_model.load(str(out / export.SAVED_MODEL_DIR))
    # The serving signature takes the raw columns by name.
    got = served.serve({name: tf.constant(values) for name, values in inputs.items()})
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    onnx = export.onnx_predict(out / export.ONNX_FILE, inputs)
    np.testing.assert_allclose(onnx, expected, rtol=1e-4, atol=1e-5)
    h5 = keras.saving.load_model(out / export.H5_FILE)
    np.testing.assert_allclose(features.predict(h5, inputs, 32), expected, rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in out.iterdir()) == [
        "metadata.json",
        "model.h5",
        "model.keras",
        "model.onnx",
        "saved_model",
    ]


def test_metadata_records_provenance(exported, prepared_dir):
    _, out, schema, _ = exported
    meta = json.loads((out / export.METADATA_FILE).read_text())
    assert [f["name"] for f in meta["features"]] == dataset.feature_names(schema)
    assert {f["kind"] for f in meta["features"]} == {"numeric"}
    train = dataset.read_splits(prepared_dir)["train"]
    assert meta["features"][10]["median"] == train[dataset.feature_names(schema)[10]].median()
    assert meta["classes"] == list(range(10))
    assert meta["task"] == "classification"
    assert {"tensorflow", "keras", "python", "mlpipe"} <= set(meta["versions"])
    train_bytes = (prepared_dir / "train.parquet").read_bytes()
    assert meta["train_data_sha256"] == hashlib.sha256(train_bytes).hexdigest()
    assert len(meta["params_sha256"]) == 64
    assert meta["git_commit"] is None or len(meta["git_commit"].removesuffix("-dirty")) == 40


def test_formats_param_limits_what_is_written(prepared_dir, tmp_path):
    params = tiny_params(export={"formats": ["keras"]})
    schema = dataset.read_schema(prepared_dir)
    model = models.build_model(params.model, schema, dataset.read_splits(prepared_dir)["train"])
    (tmp_path / "out").mkdir()
    export.write_formats(model, params.export, tmp_path / "out")
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
