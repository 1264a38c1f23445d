"""The same model saved twice gives the same bytes, and still loads."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import stage_env
from mlpipe.util import reproducible


def tiny_model() -> keras.Model:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(5, activation="relu", name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="out")(hidden), name="tiny")


def test_keras_archive_bytes_repeat_and_load(tmp_path):
    paths = []
    for name in ("first", "second"):
        path = tmp_path / f"{name}.keras"
        tiny_model().save(path)
        paths.append(path)
        time.sleep(1.1)  # zip entry times have two-second steps, date_saved one-second ones
    assert paths[0].read_bytes() != paths[1].read_bytes()
    for path in paths:
        reproducible.normalize_keras_archive(path)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    x = np.arange(8, dtype="float32").reshape(2, 4)
    loaded = keras.saving.load_model(paths[0])
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), tiny_model().predict(x, verbose=0))


EXPORT = """
import sys
sys.path.insert(0, {tests!r})
from test_reproducible import tiny_model
from conftest import stage_env
from mlpipe.util import reproducible
if sys.argv[2] == "normalize":
    with reproducible.sorted_export_variables():
        tiny_model().export(sys.argv[1], verbose=False)
    reproducible.normalize_saved_model(sys.argv[1])
else:
    tiny_model().export(sys.argv[1], verbose=False)
"""


@pytest.mark.slow
def test_saved_model_bytes_repeat_across_processes_and_load(tmp_path):
    import tensorflow as tf

    script = EXPORT.format(tests=str(Path(__file__).parent))
    folders = {}
    for name, mode in [
        ("raw_1", "raw"),
        ("raw_2", "raw"),
        ("one", "normalize"),
        ("two", "normalize"),
    ]:
        folders[name] = tmp_path / name
        command = [sys.executable, "-c", script, str(folders[name]), mode]
        subprocess.run(command, check=True, env=stage_env(), capture_output=True)

    def files(folder: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()
        }

    raw_1, raw_2 = files(folders["raw_1"]), files(folders["raw_2"])
    assert raw_1["fingerprint.pb"] != raw_2["fingerprint.pb"]  # its random uuid, at least
    assert files(folders["one"]) == files(folders["two"])
    assert tf.saved_model.experimental.read_fingerprint(str(folders["one"])).saved_model_checksum
    served = tf.saved_model.load(str(folders["one"]))
    x = np.ones((1, 4), dtype="float32")
    np.testing.assert_allclose(served.serve(x).numpy(), tiny_model().predict(x, verbose=0))
