import hashlib
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_params
from mlpipe import data, export, io, models


@pytest.fixture
def exported(prepared_dir, tmp_path):
    params = tiny_params()
    schema = data.read_schema(prepared_dir)
    x_train, _ = data.features_and_target(data.read_splits(prepared_dir)["train"], schema)
    model = models.build_model(params.model, schema, x_train)
    model_file = tmp_path / "model.keras"
    models.save_model(model, model_file)
    out = tmp_path / "export"
    with io.atomic_dir(out) as tmp:
        export.write_formats(model_file, model, params.export.formats, tmp)
        io.write_json(
            tmp / export.METADATA_FILE,
            export.metadata(schema, params, prepared_dir / "train.parquet"),
        )
    return model, out, schema, x_train


def test_both_formats_predict_like_the_model_in_memory(exported):
    model, out, _, x = exported
    x = x[:64]
    expected = model.predict(x, verbose=0)
    reloaded = keras.models.load_model(out / export.KERAS_FILE)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    served = tf.saved_model.load(str(out / export.SAVED_MODEL_DIR))
    np.testing.assert_allclose(served.serve(tf.constant(x)).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_metadata_records_provenance(exported, prepared_dir):
    _, out, schema, _ = exported
    meta = json.loads((out / export.METADATA_FILE).read_text())
    assert meta["features"] == data.feature_names(schema)
    assert meta["classes"] == list(range(10))
    assert meta["task"] == "classification"
    assert {"tensorflow", "keras", "python", "mlpipe"} <= set(meta["versions"])
    train_bytes = (prepared_dir / "train.parquet").read_bytes()
    assert meta["train_data_sha256"] == hashlib.sha256(train_bytes).hexdigest()
    assert len(meta["params_sha256"]) == 64
    assert meta["git_commit"] is None or len(meta["git_commit"].removesuffix("-dirty")) == 40


def test_formats_param_limits_what_is_written(prepared_dir, tmp_path):
    params = tiny_params(export={"formats": ["keras"]})
    schema = data.read_schema(prepared_dir)
    x_train, _ = data.features_and_target(data.read_splits(prepared_dir)["train"], schema)
    model = models.build_model(params.model, schema, x_train)
    models.save_model(model, tmp_path / "m.keras")
    (tmp_path / "out").mkdir()
    export.write_formats(tmp_path / "m.keras", model, params.export.formats, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [export.KERAS_FILE]


def test_failed_export_keeps_the_previous_one(tmp_path):
    out = tmp_path / "export"
    with io.atomic_dir(out) as tmp:
        (tmp / "metadata.json").write_text("old")
    with pytest.raises(RuntimeError), io.atomic_dir(out) as tmp:
        (tmp / "metadata.json").write_text("half")
        raise RuntimeError("disk full")
    assert (out / "metadata.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
