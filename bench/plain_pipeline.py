"""The default pipeline's work in one process and no DVC: the baseline for `e2e_repro_s`.

Prepare, build, train, evaluate and export with the same params and functions as the stages,
writing into a temporary folder. Usage: python bench/plain_pipeline.py REPO
"""

import sys
import tempfile
from pathlib import Path

from mlpipe import dataset, features
from mlpipe.evaluation import metrics
from mlpipe.modeling import models
from mlpipe.params import load_params
from mlpipe.serving import export
from mlpipe.training import loop
from mlpipe.util import runtime


def main(repo: Path) -> None:
    params = load_params(repo / "params.yaml")
    runtime.set_op_threads(runtime.op_threads(params.train.op_threads, params.train.batch_size))
    frame, default_target = dataset.load_source(params.data)
    splits, schema = dataset.prepare(frame, default_target, params.data, params.seed)

    runtime.seed_everything(params.seed)
    built = models.build_model(params.model, schema, splits["train"])
    preprocessor, model = models.split_model(built)
    xy = features.matrices(preprocessor, splits, schema)
    steps = loop.steps(len(xy["train"][1]), params.train.batch_size)
    loop.compile_model(model, params.train, schema, steps)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        dirs = loop.RunDirs(out / "best.weights.h5", out / "tb", out / "live", out / "backup")
        loop.fit(model, params.train, xy, dirs, params.seed, "plain")
        model.load_weights(dirs.checkpoint)
        best = models.compose(preprocessor, model)
        models.save_model_folder(best, out / "model")
        inputs, y_test = dataset.inputs_and_target(splits["test"], schema)
        raw = features.predict(best, inputs, params.evaluate.batch_size)
        print(metrics.score(schema, y_test, raw))  # type: ignore[arg-type]  # one output
        (out / "export").mkdir()
        export.write_formats(best, params.export, out / "export")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
