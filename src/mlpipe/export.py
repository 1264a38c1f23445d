"""Export a trained model for serving, with the metadata that says where it came from."""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import subprocess
from pathlib import Path

import keras
import pandas as pd

import mlpipe
from mlpipe.config import Params, params_hash
from mlpipe.features import feature_summary
from mlpipe.io import file_sha256

KERAS_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
METADATA_FILE = "metadata.json"
# The params that shape the trained model; their hash identifies it.
MODEL_SECTIONS = ("seed", "data", "model", "train")
LIBRARIES = ("tensorflow", "keras", "numpy", "pandas", "scikit-learn", "dvc")


def git_commit(cwd: Path | None = None) -> str | None:
    """HEAD's commit, suffixed `-dirty` when tracked files differ from it; None outside git."""
    try:
        run = dict(cwd=cwd, capture_output=True, text=True, check=True)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], **run).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "mlpipe": mlpipe.__version__}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def metadata(schema: dict, params: Params, train_file: Path) -> dict:
    """What serving needs besides the model (features, how to read files, classes) and where
    the model came from."""
    return {
        "features": feature_summary(schema, pd.read_parquet(train_file)),
        "target": schema["target"],
        "task": schema["task"],
        "classes": schema["classes"],
        "id_column": schema.get("id_column"),
        "csv": params.data.csv.model_dump(),
        "formats": list(params.export.formats),
        "versions": library_versions(),
        "git_commit": git_commit(),
        "params_sha256": params_hash(params, MODEL_SECTIONS),
        "params_sections": list(MODEL_SECTIONS),
        "train_data_sha256": file_sha256(train_file),
    }


def write_formats(model_file: Path, model: keras.Model, formats: list[str], out: Path) -> None:
    """Write each requested format of `model` (loaded from `model_file`) into `out`."""
    if "keras" in formats:
        shutil.copyfile(model_file, out / KERAS_FILE)
    if "saved_model" in formats:
        model.export(out / SAVED_MODEL_DIR, format="tf_saved_model", verbose=False)
