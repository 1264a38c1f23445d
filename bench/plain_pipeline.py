"""The default pipeline's work in one process and no DVC: the baseline for `e2e_repro_s`.

Prepare, build, train, evaluate and export with the same params and functions as the stages,
writing into a temporary folder. Usage: python bench/plain_pipeline.py REPO
"""

import sys
import tempfile
from pathlib import Path

from mlpipe import dataset
from mlpipe.evaluation import baselines
from mlpipe.evaluation.evaluate import evaluate
from mlpipe.modeling import models
from mlpipe.params import load_params
from mlpipe.schema import split_path, write_prepared
from mlpipe.serving import export
from mlpipe.training import fit
from mlpipe.util import runtime


def main(repo: Path) -> None:
    params = load_params(repo / "params.yaml")
    runtime.set_op_threads(runtime.op_threads(params.train.op_threads, params.train.batch_size))
    frame, default_target = dataset.load_source(params.data)
    splits, schema = dataset.prepare(frame, default_target, params.data, params.seed)

    runtime.seed_everything(params.seed)
    built = models.build_model(params.model, schema, splits["train"])
    rate = float(params.train.optimizer.learning_rate)  # a number in these params
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        dirs = fit.RunDirs.inside(out)
        best, _ = fit.train(
            built, params.train, splits, schema, dirs, seed=params.seed, learning_rate=rate
        )
        models.save_model_folder(best, out / "model")
        scores, _ = evaluate(
            best, schema, splits, params.evaluate.batch_size, params.train.loss_weights
        )
        print(scores, baselines.score(schema, splits) if params.evaluate.baselines else {})
        for folder in ("prepared", "export"):
            (out / folder).mkdir()
        write_prepared(out / "prepared", splits, schema)
        train_file = split_path(out / "prepared", "train")
        export.export_model(best, schema, params, train_file, out / "export", splits["test"])


if __name__ == "__main__":
    main(Path(sys.argv[1]))
