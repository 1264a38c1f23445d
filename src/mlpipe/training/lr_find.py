"""The learning-rate range test: train briefly while the rate grows exponentially, record the
loss of every batch, and suggest a rate below the one where the loss shoots up. Also the record
the lr_find stage writes and the train stage reads: the rate to train at, and its source.

Only `find_learning_rate` and `range_test` need Keras, and import it themselves: the record,
the smoothing and the suggestion rules are NumPy or plain Python, so that they are tested, and
the lr_find stage skips the test, without loading TensorFlow.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlpipe import MlpipeError
from mlpipe.optimizer_params import OptimizerParams
from mlpipe.params import LRFindParams, ParamsError
from mlpipe.schema import Schema

if TYPE_CHECKING:
    import keras
    import pandas as pd

log = logging.getLogger("mlpipe.lr_find")

RULES = {
    "minimum": "the rate at the lowest smoothed loss, divided by 10",
    "steepest": "the rate where the smoothed loss falls fastest against log(rate), "
    "skipping the first tenth of the curve",
}
# Below this many recorded steps before the loss explodes, no curve is worth a suggestion.
MIN_STEPS = 5


class LRFindError(MlpipeError):
    """The range test's curve does not support a suggestion."""


def learning_rate_record(optimizer: OptimizerParams, suggestion: float | None) -> dict:
    """What the lr_find stage hands to train: the rate to use, and whether a range test chose it.

    With a number in params the record holds that number whatever lr_find's own params are, so
    changing them leaves the record's bytes, and therefore training, untouched.
    """
    if optimizer.learning_rate == "auto":
        if suggestion is None:
            raise ValueError("learning_rate is auto: the record needs the range test's suggestion")
        return {"learning_rate": suggestion, "source": "lr_find"}
    return {"learning_rate": optimizer.learning_rate, "source": "params"}


def read_learning_rate(record_file: str | Path, optimizer: OptimizerParams) -> float:
    """The rate to train at, from the lr_find stage's record, checked against
    `train.optimizer.learning_rate` as the params say it.

    A record that does not match the params (written before they changed) is an error, not a
    silent fallback: training at a stale rate would look like a result.
    """
    try:
        record = json.loads(Path(record_file).read_text())
    except (OSError, ValueError) as err:
        raise ParamsError(
            f"{record_file}: cannot read the learning-rate record ({err}); run the lr_find stage "
            "first (`dvc repro` does)"
        ) from None
    configured = optimizer.learning_rate
    rate, source = record.get("learning_rate"), record.get("source")
    expected = "lr_find" if configured == "auto" else "params"
    if source != expected or (configured != "auto" and rate != configured):
        raise ParamsError(
            f"{record_file} holds learning rate {rate} from {source}, but params.yaml sets "
            f"train.optimizer.learning_rate to {configured}: it is out of date. Run the lr_find "
            "stage first (`dvc repro` does)."
        )
    return float(rate)


def find_learning_rate(
    model: keras.Model,
    cfg: LRFindParams,
    frame: pd.DataFrame,
    schema: Schema,
    *,
    optimizer: OptimizerParams,
    batch_size: int,
    loss_weights: dict[str, float] | None,
    seed: int,
) -> tuple[dict, dict]:
    """The range test by `cfg` (the lr_find section) of the untrained `model` (made by the build
    stage) with the `optimizer` train uses, fed the training split `frame` in batches of
    `batch_size` as train would feed it; the model is left as it was.

    Returns the curve (`range_test`'s result) and the summary for metrics/lr_find.json.
    """
    from mlpipe import features
    from mlpipe.modeling import models
    from mlpipe.training import losses, members, optimizers
    from mlpipe.util import runtime

    preprocessor, network = models.split_model(model)
    outputs = models.output_names(network)
    losses.check_loss_weights(loss_weights, outputs)
    x = features.to_numpy(features.transform(preprocessor, frame, schema))
    y = features.encode_target(frame[schema.target], schema)
    x, y = losses.label_outputs({"train": (x, y)}, outputs)["train"]
    loss, output_weights = losses.output_losses(loss_weights, schema, outputs)
    view = members.members_view(network)  # an ensemble: the loss that training minimizes
    if view is not None:
        assert isinstance(loss, str)
        network, loss = view, members.MemberLoss(loss)

    runtime.seed_everything(seed)
    steps = epoch_steps(len(frame), batch_size) if cfg.steps == "epoch" else cfg.steps
    result = range_test(
        network,
        x,
        y,
        optimizer=optimizers.build_optimizer(optimizer, cfg.min_lr),
        loss=loss,
        loss_weights=output_weights,
        min_lr=cfg.min_lr,
        max_lr=cfg.max_lr,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        smoothing=cfg.smoothing,
        stop_factor=cfg.stop_factor,
    )
    summary = {**summarize(result, cfg.rule), "range_test": True}
    log.info("suggested learning rate %g (%s)", summary["learning_rate"], summary["rule"])
    return result, summary


def rates(min_lr: float, max_lr: float, steps: int) -> np.ndarray:
    """`steps` rates from min_lr to max_lr, each the previous times the same factor."""
    return np.geomspace(min_lr, max_lr, steps)


def epoch_steps(n_rows: int, batch_size: int) -> int:
    """Full batches in one pass over `n_rows`: the range test keeps every batch the same size."""
    return max(n_rows // batch_size, 1)


def batch_rows(n_rows: int, batch_size: int, seed: int, n_batches: int) -> Iterator[np.ndarray]:
    """Row indices of `n_batches` full batches; each pass over the rows is shuffled by
    (seed, pass), so a test longer than one epoch starts a fresh, reproducible order."""
    per_pass = epoch_steps(n_rows, batch_size)
    order = np.arange(n_rows)
    for batch in range(n_batches):
        pass_number, index = divmod(batch, per_pass)
        if index == 0:
            order = np.random.default_rng([seed, pass_number]).permutation(n_rows)
        yield order[index * batch_size : (index + 1) * batch_size]


def smooth(losses: np.ndarray, beta: float) -> np.ndarray:
    """Exponential moving average of `losses` with bias correction.

    The correction divides by 1 - beta**(i+1), so early values are not dragged towards the
    zero the average starts from. A non-finite loss makes every later value non-finite.
    """
    smoothed = np.empty(len(losses))
    average = 0.0
    for i, loss in enumerate(np.asarray(losses, dtype=float)):
        average = beta * average + (1 - beta) * loss
        smoothed[i] = average / (1 - beta ** (i + 1))
    return smoothed


def exploded(smoothed: np.ndarray, stop_factor: float) -> bool:
    """Whether the last smoothed loss is not finite or above stop_factor times the lowest."""
    last = smoothed[-1]
    return not math.isfinite(last) or last > stop_factor * np.min(smoothed)


def suggest(learning_rates: np.ndarray, smoothed: np.ndarray, rule: str) -> float:
    """The rate `rule` picks from a recorded curve (see RULES); LRFindError if it cannot."""
    learning_rates = np.asarray(learning_rates, dtype=float)
    smoothed = np.asarray(smoothed, dtype=float)
    finite = np.flatnonzero(np.isfinite(smoothed))
    # Only the curve up to the first non-finite loss counts.
    end = len(smoothed) if len(finite) == len(smoothed) else int(np.argmin(np.isfinite(smoothed)))
    if end < MIN_STEPS:
        raise LRFindError(
            f"the loss exploded after {end} step(s) of the range test, too few to read a curve "
            "from: lower lr_find.min_lr, or raise lr_find.steps"
        )
    lowest = int(np.argmin(smoothed[:end]))
    if lowest == 0:
        raise LRFindError(
            f"the smoothed loss never fell below its value at the first rate tried "
            f"({learning_rates[0]:.3g}): lower lr_find.min_lr, or check that the model can learn "
            "(data, loss, frozen layers)"
        )
    if rule == "minimum":
        return float(learning_rates[lowest] / 10)
    if rule == "steepest":
        # The first tenth of the curve is skipped: at tiny rates the loss is flat and its slope
        # is noise, which the moving average has not yet damped.
        start = min(len(smoothed) // 10, lowest - 1)
        part = slice(start, lowest + 1)
        slope = np.gradient(smoothed[part], np.log(learning_rates[part]))
        return float(learning_rates[start + int(np.argmin(slope))])
    raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")


def summarize(result: dict, rule: str) -> dict:
    """metrics/lr_find.json from a range test's result: the suggestion, the rule and the curve's
    landmarks. The suggestion keeps 3 significant digits, so tiny float noise cannot move it."""
    learning_rates = np.asarray(result["learning_rates"])
    smoothed = np.asarray(result["smoothed"])
    suggestion = _round(suggest(learning_rates, smoothed, rule))
    lowest = int(np.nanargmin(smoothed))
    try:
        steepest = _round(suggest(learning_rates, smoothed, "steepest"))
    except LRFindError:
        steepest = None
    if not result["stopped_early"]:
        log.warning(
            "the loss did not shoot up below lr_find.max_lr (%g): raise it to see where it does",
            learning_rates[-1],
        )
    return {
        "learning_rate": suggestion,
        "suggested_learning_rate": suggestion,
        "rule": f"{rule}: {RULES[rule]}",
        "tested_from": _round(learning_rates[0]),
        "tested_to": _round(learning_rates[-1]),
        "steps_run": len(learning_rates),
        "steps_planned": result["steps_planned"],
        "stopped_early": result["stopped_early"],
        "initial_loss": round(result["initial_loss"], 6),
        "min_smoothed_loss": round(float(smoothed[lowest]), 6),
        "min_loss_learning_rate": _round(learning_rates[lowest]),
        "steepest_learning_rate": steepest,
    }


def range_test(
    model: keras.Model,
    x: np.ndarray | dict[str, np.ndarray],
    y: np.ndarray | dict[str, np.ndarray],
    *,
    optimizer: keras.optimizers.Optimizer,
    loss,
    loss_weights: dict[str, float] | None = None,
    min_lr: float,
    max_lr: float,
    steps: int,
    batch_size: int,
    seed: int,
    smoothing: float,
    stop_factor: float,
) -> dict:
    """Train `model` on (x, y) for `steps` batches, the rate growing from min_lr to max_lr.

    The loss recorded against a rate is the loss of the next batch, measured right after the
    update made at that rate: Keras's own `logs["loss"]` is a running mean over the epoch, and
    the loss train_on_batch returns precedes its own update. The run stops once the smoothed
    loss explodes (`exploded`). The model is compiled with `optimizer` and `loss` (and
    `loss_weights`, for a model with several outputs: x and y are then dicts of arrays), and its
    weights are put back as they were before returning.
    """
    import keras

    if steps < 2:
        raise ValueError(f"a range test needs at least 2 steps, got {steps}")
    model.compile(optimizer=optimizer, loss=loss, loss_weights=loss_weights, steps_per_execution=1)

    def take(arrays, rows):
        return keras.tree.map_structure(lambda a: a[rows], arrays)

    initial_weights = model.get_weights()
    planned = rates(min_lr, max_lr, steps)
    learning_rates, losses, smoothed = [], [], []
    initial_loss, average, stopped_early = math.nan, 0.0, False
    try:
        n_rows = len(keras.tree.flatten(x)[0])
        for step, rows in enumerate(batch_rows(n_rows, batch_size, seed, steps + 1)):
            # The last call only measures the loss after the last update; that update is undone.
            model.optimizer.learning_rate = planned[min(step, steps - 1)]
            # The total loss: with several outputs, Keras also returns each output's.
            logs = model.train_on_batch(take(x, rows), take(y, rows), return_dict=True)
            loss_value = float(keras.ops.convert_to_numpy(logs["loss"]))
            if step == 0:
                initial_loss = loss_value
                continue
            learning_rates.append(float(planned[step - 1]))
            losses.append(loss_value)
            # smooth(), one step at a time
            average = smoothing * average + (1 - smoothing) * loss_value
            smoothed.append(average / (1 - smoothing ** len(losses)))
            if exploded(np.array(smoothed), stop_factor):
                stopped_early = step < steps
                break
    finally:
        model.set_weights(initial_weights)
    finite = np.where(np.isfinite(smoothed), smoothed, np.inf)
    log.info(
        "range test: %d of %d steps, rates %.3g to %.3g, lowest smoothed loss %.4g at %.3g",
        len(losses),
        steps,
        learning_rates[0],
        learning_rates[-1],
        finite.min(),
        learning_rates[int(finite.argmin())],
    )
    return {
        "learning_rates": learning_rates,
        "losses": losses,
        "smoothed": smoothed,
        "initial_loss": initial_loss,
        "steps_planned": steps,
        "stopped_early": stopped_early,
    }


def curve_csv(result: dict | None) -> str:
    """The curve as the DVC plot's data: one row per step (only the header when no test ran)."""
    lines = ["step,learning_rate,loss,smoothed_loss"]
    if result is not None:
        rows = zip(result["learning_rates"], result["losses"], result["smoothed"], strict=True)
        for step, (rate, loss, smoothed) in enumerate(rows, start=1):
            if math.isfinite(loss) and math.isfinite(smoothed):  # a plot cannot draw NaN
                lines.append(f"{step},{rate:.6g},{loss:.6g},{smoothed:.6g}")
    return "\n".join(lines) + "\n"


def curve_png(result: dict | None, summary: dict, note: str = "") -> bytes:
    """A PNG of the loss against the rate (log scale) with the suggestion marked, or of `note`
    alone when no test ran."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    figure = Figure(figsize=(7, 4.5), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    if result is None:
        axes.text(0.5, 0.5, note, ha="center", va="center", wrap=True)
        axes.set_axis_off()
    else:
        rates_ = np.asarray(result["learning_rates"])
        axes.plot(rates_, result["losses"], color="0.75", label="loss of each batch")
        axes.plot(rates_, result["smoothed"], color="C0", label="smoothed loss")
        suggestion = summary["suggested_learning_rate"]
        axes.axvline(suggestion, color="C3", linestyle="--", label=f"suggestion {suggestion:.3g}")
        axes.set_xscale("log")
        smoothed = np.asarray(result["smoothed"])
        lowest = int(np.argmin(np.where(np.isfinite(smoothed), smoothed, np.inf)))
        # Cap the y axis above the descent, or the explosion would flatten the part that matters.
        axes.set_ylim(0, 1.3 * max(summary["initial_loss"], *smoothed[: lowest + 1]))
        axes.set_xlabel("learning rate (log scale)")
        axes.set_ylabel("training loss")
        axes.set_title(f"Learning-rate range test: {summary['rule']}", fontsize=9)
        axes.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _round(value: float) -> float:
    return float(f"{value:.3g}")
