"""The data contract between `prepare` and every later stage: the `Schema` of the data, written
to `schema.json` beside the splits it describes, and read back from there. Imports no TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import pandas as pd
from pydantic import (
    BaseModel,
    ConfigDict,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from mlpipe import MlpipeError
from mlpipe.util import files
from mlpipe.util.files import plain
from mlpipe.util.paths import SCHEMA_FILE
from mlpipe.util.tables import DataError

SPLITS = ("train", "valid", "test")

# A class label as the target holds it. Strict, so that `True`, `1` and `"1"` stay apart.
Label = StrictBool | StrictInt | StrictFloat | StrictStr


class Record(BaseModel):
    """Base of the files that stages pass on: frozen, and an unknown key is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Feature(Record):
    """One feature column and the model input that takes it."""

    name: str  # the column, in the data and in files to predict on
    input: str  # the model's input of that name (a valid signature argument)
    kind: Literal["numeric", "categorical"]
    dtype: str | None = None  # the column's dtype as read; unknown for a model met without data


class Schema(Record):
    """What the later stages need to know of the data besides its rows."""

    features: tuple[Feature, ...]
    target: str
    task: Literal["classification", "regression"]
    classes: tuple[Label, ...] | None = None  # labels in index order; None for regression
    id_column: str | None = None
    weight_column: str | None = None
    target_scale: float | None = None  # the target was divided by this in prepare
    warnings: tuple[str, ...] = ()  # what prepare found suspicious but did not refuse

    @model_validator(mode="after")
    def _classes_follow_the_task(self) -> Schema:
        if (self.task == "classification") != (self.classes is not None):
            raise ValueError("a classification schema lists its classes, a regression one none")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def n_classes(self) -> int:
        """The number of classes; 0 for regression."""
        return len(self.classes or ())

    def changes_from(self, previous: Schema) -> list[str]:
        """How the features and target differ from `previous` (the exported model's, say)."""
        now = {f.name: f.kind for f in self.features}
        before = {f.name: f.kind for f in previous.features}
        changes = []
        if now.keys() - before.keys():
            changes.append(f"new features {sorted(now.keys() - before.keys())}")
        if before.keys() - now.keys():
            changes.append(f"features no longer present {sorted(before.keys() - now.keys())}")
        kinds = [n for n in now.keys() & before.keys() if now[n] != before[n]]
        if kinds:
            changes.append(f"features whose kind changed {sorted(kinds)}")
        if self.target != previous.target:
            changes.append(f"target `{previous.target}` is now `{self.target}`")
        return changes


R = TypeVar("R", bound=Record)


def encode_target(target: pd.Series, schema: Schema) -> np.ndarray:
    """Class labels become indices into `schema.classes`; regression targets become float32."""
    if schema.classes is None:
        return target.to_numpy(dtype=np.float32)
    index = {label: i for i, label in enumerate(schema.classes)}
    codes = target.map(lambda v: index.get(plain(v), -1)).to_numpy(dtype=np.int64)
    unknown = sorted(set(target[codes < 0].map(plain)))
    if unknown:
        raise DataError(f"target `{schema.target}` has labels not in the schema: {unknown}")
    return codes


def read_record(kind: type[R], path: Path, remedy: str) -> R:
    """`path` as a `kind`; a missing or malformed file is an error that says what to rerun."""
    try:
        return kind.model_validate_json(Path(path).read_bytes())
    except FileNotFoundError:
        raise MlpipeError(f"{path}: not found; {remedy}") from None
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in err.errors()[:3]
        )
        raise MlpipeError(
            f"{path}: unreadable by this version of mlpipe ({problems}); {remedy}"
        ) from None


def write_record(path: Path, record: Record) -> None:
    files.write_json(path, record.model_dump(mode="json"))


# The prepared folder: one Parquet file per split, and the schema


def split_path(prepared_dir: Path, name: str) -> Path:
    return Path(prepared_dir) / f"{name}.parquet"


def read_schema(prepared_dir: Path) -> Schema:
    return read_record(Schema, Path(prepared_dir) / SCHEMA_FILE, "rerun `dvc repro prepare`")


def read_splits(prepared_dir: Path, names: tuple[str, ...] = SPLITS) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(split_path(prepared_dir, name)) for name in names}


def write_prepared(folder: Path, splits: dict[str, pd.DataFrame], schema: Schema) -> None:
    """Lay out `folder` as the later stages read it."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    for name, part in splits.items():
        part.to_parquet(split_path(folder, name), index=False)
    write_record(Path(folder) / SCHEMA_FILE, schema)
