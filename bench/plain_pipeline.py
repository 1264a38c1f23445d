"""The default pipeline's work in one process and no DVC: the baseline for `e2e_repro_s`.

Prepare, build, train, evaluate and export with the same params and functions as the stages,
writing into a temporary folder. Usage: python bench/plain_pipeline.py REPO
"""

import sys
import tempfile
from pathlib import Path

from mlpipe import data, export, features, metrics, models, runtime, training
from mlpipe.config import load_params


def main(repo: Path) -> None:
    params = load_params(repo / "params.yaml")
    runtime.set_op_threads(runtime.op_threads(params.train.op_threads, params.train.batch_size))
    frame, default_target = data.load_source(params.data)
    splits, schema = data.prepare(frame, default_target, params.data, params.seed)

    runtime.seed_everything(params.seed)
    built = models.build_model(params.model, schema, splits["train"])
    preprocessor, model = models.split_model(built)
    xy = features.matrices(preprocessor, splits, schema)
    steps = training.steps(len(xy["train"][1]), params.train.batch_size)
    training.compile_model(model, params.train, schema, steps)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        dirs = training.RunDirs(out / "best.weights.h5", out / "tb", out / "live", out / "backup")
        training.fit(model, params.train, xy, dirs, params.seed, "plain")
        model.load_weights(dirs.checkpoint)
        best = models.compose(preprocessor, model)
        models.save_model_folder(best, out / "model")
        inputs, y_test = data.inputs_and_target(splits["test"], schema)
        raw = features.predict(best, inputs, params.evaluate.batch_size)
        print(metrics.score(schema, y_test, raw))
        (out / "export").mkdir()
        export.write_formats(best, params.export, out / "export")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
