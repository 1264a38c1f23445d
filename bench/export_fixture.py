"""An exported model on 64 numeric columns (scikit-learn's digits, 10 classes) for the
benchmarks of `mlpipe predict` and `mlpipe serve`, and a file of rows shaped like its input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mlpipe import dataset
from mlpipe.params import Params, parse_params
from mlpipe.schema import write_prepared

PARAMS = {"seed": 0, "train": {"epochs": 3}}  # the default (300, 100) MLP, briefly trained


def export_digits_model(folder: Path) -> tuple[Path, list[str]]:
    """Prepare the digits, build and train the default MLP for a few epochs, and export it to
    `folder`/export; return the export folder and the feature names."""
    from mlpipe.modeling import models
    from mlpipe.schema import split_path
    from mlpipe.serving import export
    from mlpipe.training import fit
    from mlpipe.util import files, runtime

    params: Params = parse_params(PARAMS)
    runtime.seed_everything(params.seed)
    frame, target = dataset.load_source(params.data)
    splits, schema = dataset.prepare(frame, target, params.data, params.seed)
    prepared = folder / "prepared"
    write_prepared(prepared, splits, schema)
    model = models.build_model(params.model, schema, splits["train"])
    dirs = fit.RunDirs.inside(folder / "run")
    rate = float(params.train.optimizer.learning_rate)
    model, _ = fit.train(
        model, params.train, splits, schema, dirs, seed=params.seed, learning_rate=rate
    )
    out = folder / "export"
    with files.atomic_dir(out) as tmp:
        export.export_model(model, schema, params, split_path(prepared, "train"), tmp)
    return out, schema.feature_names


def rows(names: list[str], n: int, seed: int = 0) -> pd.DataFrame:
    """`n` rows of pixel intensities 0 to 16, as in the digits, with an id column."""
    values = np.random.default_rng(seed).integers(0, 17, size=(n, len(names)), dtype=np.int8)
    frame = pd.DataFrame(values, columns=names)
    frame.insert(0, "id", np.arange(n))
    return frame
