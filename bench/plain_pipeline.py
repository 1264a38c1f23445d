"""The default pipeline's work in one process and no DVC: the baseline for `e2e_repro_s`.

Prepare, build, train, evaluate and export with the same params and functions as the stages,
writing into a temporary folder. Usage: python bench/plain_pipeline.py REPO
"""

import sys
import tempfile
from pathlib import Path

from mlpipe import data, export, metrics, models, runtime, training
from mlpipe.config import load_params


def main(repo: Path) -> None:
    params = load_params(repo / "params.yaml")
    frame, default_target = data.load_source(params.data.source)
    target, task = data.select_target(frame, params.data, default_target)
    splits = data.split_frame(frame, target, task, params.data, params.seed)
    schema = data.make_schema(frame, target, task, params.data.weight_column)
    xy = {name: data.features_and_target(part, schema) for name, part in splits.items()}

    runtime.seed_everything(params.seed)
    model = models.build_model(params.model, schema, xy["train"][0])
    steps = training.steps(len(xy["train"][0]), params.train.batch_size)
    training.compile_model(model, params.train, schema, steps)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        dirs = training.RunDirs(out / "best.keras", out / "tb", out / "live", out / "backup")
        training.fit(model, params.train, xy, dirs, params.seed, "plain")
        best = models.load_model(dirs.checkpoint)
        raw = best.predict(xy["test"][0], batch_size=params.evaluate.batch_size, verbose=0)
        print(metrics.score(schema, xy["test"][1], raw))
        (out / "export").mkdir()
        export.write_formats(dirs.checkpoint, best, params.export.formats, out / "export")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
