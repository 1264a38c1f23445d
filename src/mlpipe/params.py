"""The params schema: `params.yaml` is read once into these frozen, strict models.

Defaults live here and only here. Each section is its own model so that later features extend
a section by adding fields, and each stage declares in `dvc.yaml` the sections it reads.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from mlpipe import MlpipeError
from mlpipe.model_params import ModelParams
from mlpipe.optimizer_params import LRScheduleParams, OptimizerParams
from mlpipe.util.validation import Section, describe, merge_alternatives

DEFAULT_PARAMS_FILE = "params.yaml"

Fraction = Annotated[float, Field(gt=0, lt=1)]


# Cells that mean "no value" in users' files, compared after trimming whitespace.
DEFAULT_NA_VALUES = ["", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "?"]
TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq")


def _check_encoding(value: str) -> str:
    try:
        codecs.lookup(value)
    except LookupError:
        raise ValueError(
            "unknown text encoding; use a Python codec name such as utf-8, cp1252, latin-1 "
            "or utf-16"
        ) from None
    return value


class CsvParams(Section):
    sep: str | None = Field(
        None, min_length=1, description="Column delimiter; null: sniffed from the file."
    )
    na_values: list[str] = Field(
        DEFAULT_NA_VALUES, description="Cells read as missing values, after trimming whitespace."
    )
    encoding: Annotated[str, AfterValidator(_check_encoding)] = Field(
        "utf-8",
        description="Text encoding of CSV files, e.g. cp1252 for Windows exports; a UTF-8 "
        "byte-order mark is skipped.",
    )


def _not_empty(value: list[str] | None) -> list[str] | None:
    if value is not None and not value:
        raise ValueError(
            "an empty list selects no feature; remove the key (or set it to null) to use every "
            "column with no other role"
        )
    return value


class FeatureSelection(Section):
    include: Annotated[list[str] | None, AfterValidator(_not_empty)] = Field(
        None, description="Feature columns to use; null: every column not otherwise used."
    )
    exclude: list[str] = Field([], description="Columns never used as features.")


def _check_source(value: str | None) -> str | None:
    if value is None or re.fullmatch(r"sklearn:[a-z_]+", value):
        return value
    # A folder (no suffix) or a glob of Parquet files is read in batches (mlpipe.dataset_stream)
    sharded = not PurePath(value).suffix or any(c in value for c in "*?[")
    if not sharded and not value.lower().endswith(TABLE_SUFFIXES):
        raise ValueError(
            f"expected `sklearn:<name>`, a path to a file ending in {', '.join(TABLE_SUFFIXES)}, "
            "or a folder or glob of Parquet files"
        )
    return value


class DataParams(Section):
    source: Annotated[str, AfterValidator(_check_source)] = Field(
        "sklearn:digits",
        description="`sklearn:<name>` for a dataset bundled with scikit-learn, or a path to a "
        "CSV or Parquet file relative to the project root.",
    )
    test_source: Annotated[str | None, AfterValidator(_check_source)] = Field(
        None, description="A separate CSV or Parquet file of test rows; null: split from source."
    )
    split_column: str | None = Field(
        None, description="Column whose values (train, valid, test) assign rows to splits."
    )
    target: str | None = Field(
        None, description="Target column; null means the dataset's own target."
    )
    target_map: dict[str, str] = Field(
        {},
        description="Target labels renamed in every file before anything else, e.g. "
        "{'>50K.': '>50K'} for a test file whose labels end in a dot.",
    )
    task: Literal["auto", "classification", "regression"] = "auto"
    features: FeatureSelection = FeatureSelection()
    categorical: list[str] = Field([], description="Columns to treat as categories.")
    numeric: list[str] = Field([], description="Columns that must hold numbers.")
    id_column: str | None = Field(None, description="Row identifier; never a feature.")
    weight_column: str | None = Field(
        None, description="Per-row sample weight column; never used as a feature."
    )
    csv: CsvParams = CsvParams()
    target_scale: float | None = Field(
        None,
        gt=0,
        description="Regression only: divide the target by this in prepare; predictions are in "
        "the divided unit.",
    )
    test_size: Fraction = 0.2
    valid_size: Fraction = 0.1

    @model_validator(mode="after")
    def _consistent(self) -> DataParams:
        if self.test_size + self.valid_size >= 1:
            raise ValueError(
                f"test_size + valid_size must be below 1 so that rows are left for training, "
                f"got {self.test_size} + {self.valid_size}"
            )
        both = sorted(set(self.categorical) & set(self.numeric))
        if both:
            raise ValueError(f"columns {both} are in both data.categorical and data.numeric")
        if self.test_source and self.split_column:
            raise ValueError("give data.test_source or data.split_column, not both")
        if self.source.startswith("sklearn:") and (self.test_source or self.split_column):
            raise ValueError("data.test_source and data.split_column apply to files, not sklearn:")
        if self.target_map and not self.target:
            raise ValueError("data.target_map renames labels of data.target: name the target")
        return self


class EarlyStoppingParams(Section):
    patience: int = Field(10, ge=0)
    min_delta: float = Field(0.0, ge=0)


def _check_class_weight(value: Any) -> Any:
    if value is None or value == "balanced":
        return value
    if isinstance(value, dict) and value:
        weights = {}
        for label, weight in value.items():
            if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
                raise ValueError(f"the weight of class {label!r} must be a number >= 0")
            weights[label] = float(weight)
        return weights
    raise ValueError("expected null, `balanced`, or a mapping from class label to weight")


ClassWeight = Annotated[
    Any,
    PlainValidator(_check_class_weight),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "null"},
                {"const": "balanced"},
                {"type": "object", "additionalProperties": {"type": "number", "minimum": 0}},
            ]
        }
    ),
]


# What Keras logs on the validation split: the loss, and the metrics of the task; a model
# with an auxiliary output logs each of them per output too. The train stage then checks the
# name against the task.
MONITOR_METRICS = {"classification": ("accuracy", "auc"), "regression": ("rmse", "mae")}
MONITOR_OUTPUTS = ("main", "aux")


def _check_monitor(value: str) -> str:
    metrics = ["loss", *(m for names in MONITOR_METRICS.values() for m in names)]
    plain = [f"val_{m}" for m in metrics]
    per_output = [f"val_{out}_{m}" for out in MONITOR_OUTPUTS for m in metrics]
    if value not in plain + per_output:
        raise ValueError(
            f"not a value Keras reports; choose val_loss, val_accuracy or val_auc "
            f"(classification), val_rmse or val_mae (regression); with model.aux_output, also "
            f"per output: "
            f"{', '.join(per_output)}"
        )
    return value


class DistributeParams(Section):
    """Data-parallel training on tf.distribute; README "Distributed training"."""

    strategy: Literal["none", "mirrored", "multi_worker"] = Field(
        "none",
        description="none: one process, one device; mirrored: MirroredStrategy over the local "
        "GPUs (or cpu_devices); multi_worker: MultiWorkerMirroredStrategy over the workers "
        "that TF_CONFIG names (or local_workers).",
    )
    cpu_devices: int = Field(
        0,
        ge=0,
        description="mirrored on a machine without GPUs: replicas on this many logical CPU "
        "devices; 0: the GPUs.",
    )
    local_workers: int = Field(
        0,
        ge=0,
        description="multi_worker: start this many workers on this machine (loopback ports); "
        "0: join the cluster TF_CONFIG describes.",
    )

    @model_validator(mode="after")
    def _applies(self) -> DistributeParams:
        if self.cpu_devices and self.strategy != "mirrored":
            raise ValueError(
                f"cpu_devices: {self.cpu_devices} applies to strategy mirrored; set it to 0 or "
                "strategy to mirrored"
            )
        if self.local_workers and self.strategy != "multi_worker":
            raise ValueError(
                f"local_workers: {self.local_workers} applies to strategy multi_worker; set it "
                "to 0 or strategy to multi_worker"
            )
        if self.local_workers == 1:
            raise ValueError("local_workers: 1 is one process; use 2 or more, or strategy none")
        return self


class TrainParams(Section):
    epochs: int = Field(100, gt=0)
    batch_size: int = Field(32, gt=0)
    steps_per_execution: Literal["auto"] | Annotated[int, Field(gt=0)] = Field(
        "auto",
        description="Batches per call into TensorFlow; `auto`: up to 128.",
    )
    op_threads: Literal["auto"] | Annotated[int, Field(ge=0)] = Field(
        "auto",
        description="Threads one TensorFlow op may use; 0: all cores; `auto`: 1 for batches of "
        "up to 512 rows, else all cores.",
    )
    precision: Literal["float32", "mixed_bfloat16"] = Field(
        "float32",
        description="What the network computes in while it trains: float32, or mixed_bfloat16 "
        "(float32 weights and heads, bfloat16 products; pays on GPUs and CPUs with AMX or "
        "AVX-512 BF16, at large batches). The saved model computes in float32.",
    )
    monitor: Annotated[str, AfterValidator(_check_monitor)] = Field(
        "val_loss",
        description="Validation metric for checkpointing and early stopping.",
    )
    class_weight: ClassWeight = Field(
        None, description="null, `balanced`, or a mapping from class label to weight."
    )
    loss_weights: dict[str, Annotated[float, Field(ge=0)]] | None = Field(
        None,
        description="Weight of each output's loss in the total, e.g. {main: 0.9, aux: 0.1}; "
        "null: 1 each. For models with several outputs.",
    )
    optimizer: OptimizerParams = OptimizerParams()
    lr_schedule: LRScheduleParams = LRScheduleParams()
    early_stopping: EarlyStoppingParams = EarlyStoppingParams()
    distribute: DistributeParams = DistributeParams()


class LRFindParams(Section):
    """The learning-rate range test, run by the lr_find stage when the rate is `auto`."""

    min_lr: float = Field(1e-5, gt=0)
    max_lr: float = Field(10.0, gt=0)
    steps: Literal["epoch"] | Annotated[int, Field(ge=10)] = Field(
        "epoch", description="Batches to run: `epoch` for one pass over the training split."
    )
    smoothing: float = Field(
        0.9, ge=0, lt=1, description="Weight of the past in the moving average of the loss."
    )
    stop_factor: float = Field(
        4.0, gt=1, description="Stop once the smoothed loss exceeds this many times its minimum."
    )
    rule: Literal["minimum", "steepest"] = Field(
        "minimum",
        description="`minimum`: the rate at the lowest smoothed loss / 10; `steepest`: the "
        "rate where the smoothed loss falls fastest.",
    )

    @model_validator(mode="after")
    def _range_goes_up(self) -> LRFindParams:
        if self.min_lr >= self.max_lr:
            raise ValueError(f"min_lr ({self.min_lr}) must be below max_lr ({self.max_lr})")
        return self


MetricName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]


class EvaluateParams(Section):
    batch_size: int = Field(256, gt=0)
    baselines: bool = Field(
        True, description="Also fit and score scikit-learn baselines on the same splits."
    )
    # The names depend on the task, which only the prepared data knows: the evaluate stage checks
    # them against its task before it scores anything.
    thresholds: dict[MetricName, Annotated[float, Field(allow_inf_nan=False)]] = Field(
        {},
        description="Quality gate on the test split: metric name to floor (ceiling for errors).",
    )


def _formats_hint(value: Any) -> Any:
    switches = [v for v in value if v in ("onnx", "h5")] if isinstance(value, list) else []
    if switches:
        raise ValueError(
            f"{', '.join(switches)} is not listed in export.formats (keras, saved_model) but "
            f"switched on by its own key: export.{switches[0]}: true, beside the formats "
            "(the ONNX file is checked in onnxruntime at export)"
        )
    return value


class ExportParams(Section):
    formats: Annotated[list[Literal["keras", "saved_model"]], BeforeValidator(_formats_hint)] = (
        Field(["keras", "saved_model"], min_length=1)
    )
    onnx: bool = Field(False, description="Also write model.onnx, checked in onnxruntime.")
    h5: bool = Field(False, description="Also write the legacy HDF5 file older tools want.")


class Params(Section):
    seed: int = Field(42, ge=0)
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    lr_find: LRFindParams = LRFindParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()


class ParamsError(MlpipeError):
    """params.yaml is unreadable or does not match the schema."""


def read_yaml(
    path: str | Path, error: type[MlpipeError] = ParamsError, missing: str = "file not found"
) -> Any:
    """The YAML document in `path`; a missing or malformed file raises `error` naming it."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {err}") from None


def load_params(path: str | Path = DEFAULT_PARAMS_FILE) -> Params:
    """Read and validate the whole params file; raise ParamsError naming every bad key."""
    missing = (
        f"file not found in {Path.cwd()}; run from the project root (the folder of dvc.yaml), "
        "restore it with `git checkout -- params.yaml`, or start from the README's params"
    )
    raw = read_yaml(path, missing=missing)
    return parse_params(raw or {}, source=str(path))


def parse_params(raw: Any, source: str = DEFAULT_PARAMS_FILE) -> Params:
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        problems = merge_alternatives(
            list(dict.fromkeys(describe(e, Params) for e in err.errors()))
        )
        raise ParamsError(
            f"{source}: {len(problems)} invalid param(s):\n"
            + "\n".join(f"  - {p}" for p in problems)
        ) from None


def params_hash(params: Params, sections: tuple[str, ...]) -> str:
    """SHA-256 of the given sections with defaults filled in, independent of key order."""
    dumped = params.model_dump(mode="json", include=set(sections))
    return hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()
