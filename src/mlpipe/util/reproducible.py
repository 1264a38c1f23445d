"""Model files with the same bytes for the same model, so that rerunning a stage leaves
`dvc.lock` unchanged and a teammate's run matches the one in the DVC remote.

Keras and TensorFlow write four things that change from save to save with nothing else
changed: the `.keras` zip's entry times and its `date_saved`, the `shared_object_id`s in its
config (Python object addresses), the random `uuid` of a SavedModel's `fingerprint.pb`, and the
order of a SavedModel's variables, which Keras takes from TensorFlow's traced functions in an
order that varies between processes. These functions fix exactly those, and nothing that
loading reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold


def normalize_keras_archive(path: str | Path) -> None:
    """Rewrite a `.keras` file with fixed entry times, no save date and object ids numbered in
    order of appearance. The archive keeps its entries, their order and their compression."""
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in entries:
            if info.filename == "metadata.json":
                data = _json_bytes({k: v for k, v in json.loads(data).items() if k != "date_saved"})
            elif info.filename == "config.json":
                data = _json_bytes(_renumber_shared_ids(json.loads(data), {}))
            fixed = zipfile.ZipInfo(info.filename, date_time=ZIP_TIME)
            fixed.compress_type = info.compress_type
            fixed.external_attr = 0o644 << 16
            archive.writestr(fixed, data)


def normalize_saved_model(folder: str | Path) -> None:
    """Replace the random `uuid` of a SavedModel's fingerprint by one derived from the
    fingerprint's own hashes of the graph and the variables, which identify the model."""
    from tensorflow.core.protobuf import fingerprint_pb2

    path = Path(folder) / "fingerprint.pb"
    if not path.exists():
        return
    fingerprint = fingerprint_pb2.FingerprintDef()
    fingerprint.ParseFromString(path.read_bytes())
    fingerprint.uuid = ""
    digest = hashlib.sha256(fingerprint.SerializeToString(deterministic=True)).digest()
    fingerprint.uuid = str(int.from_bytes(digest[:16], "big"))
    path.write_bytes(fingerprint.SerializeToString(deterministic=True))


@contextlib.contextmanager
def sorted_export_variables() -> Iterator[None]:
    """While exporting a SavedModel, list its variables by name instead of in trace order.

    Keras offers no option for this; the patch replaces one private function of its exporter
    for the duration, and fails loudly if a Keras version no longer has it."""
    from keras.src.export import saved_model_export_archive as archive

    original = getattr(archive, "_list_variables_used_by_fns", None)
    if original is None:
        import keras

        raise RuntimeError(
            f"Keras {keras.__version__} has no saved_model_export_archive."
            "_list_variables_used_by_fns: update mlpipe.util.reproducible for it"
        )

    def by_name(fns):
        trainable, other = original(fns)
        return sorted(trainable, key=_name), sorted(other, key=_name)

    archive._list_variables_used_by_fns = by_name
    try:
        yield
    finally:
        archive._list_variables_used_by_fns = original


def _name(variable) -> str:
    return variable.name


def _renumber_shared_ids(node: Any, ids: dict[int, int]) -> Any:
    """Number `shared_object_id`s 1, 2, ... in order of first appearance. Keras uses them only
    to tell which config entries are the same object, so any consistent numbering loads."""
    if isinstance(node, dict):
        renumbered = {}
        for key, value in node.items():
            if key == "shared_object_id" and isinstance(value, int):
                renumbered[key] = ids.setdefault(value, len(ids) + 1)
            else:
                renumbered[key] = _renumber_shared_ids(value, ids)
        return renumbered
    if isinstance(node, list):
        return [_renumber_shared_ids(item, ids) for item in node]
    return node


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj).encode()
