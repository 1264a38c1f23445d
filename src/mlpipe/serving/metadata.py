"""`metadata.json`, which `export` writes beside the model and `mlpipe predict` reads: the
`Schema` of the data the model was trained on, extended with what training learned of each
feature, how to read files, and where the model came from. Imports no TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from mlpipe.params import CsvParams
from mlpipe.schema import Feature, Schema, read_record, write_record
from mlpipe.util.paths import METADATA_FILE

# The named outputs of the SavedModel's signature and of `mlpipe serve`'s TF Serving route:
# classification gives the probability of each class, the class names beside them (TF
# Estimator's convention) and the most probable class; regression the predicted value.
SCORES = "scores"
CLASSES = "classes"
PREDICTED_CLASS = "predicted_class"
PREDICTIONS = "predictions"


def _absent(value) -> bool:
    return value is None


class LearnedFeature(Feature):
    """A feature with what the preprocessing learned of it on the training split: a numeric
    one's median (what a missing value becomes), a categorical one's categories seen, most
    frequent first. The other is left out of the file."""

    median: float | None = Field(None, exclude_if=_absent)
    categories: tuple[str, ...] | None = Field(None, exclude_if=_absent)


class ExportMetadata(Schema):
    features: tuple[LearnedFeature, ...]
    api: str  # model.api
    outputs: tuple[str, ...]  # the model's outputs, main first
    csv: CsvParams  # how `mlpipe predict` reads a CSV file: as the training data was read
    formats: tuple[str, ...]
    versions: dict[str, str]
    params_sha256: str  # of the params sections that shaped the model
    params_sections: tuple[str, ...]
    train_data_sha256: str


def read_metadata(path: Path) -> ExportMetadata:
    return read_record(ExportMetadata, path, "export the model again (`dvc repro export`)")


def write_metadata(folder: Path, metadata: ExportMetadata) -> None:
    write_record(Path(folder) / METADATA_FILE, metadata)
