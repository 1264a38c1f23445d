"""The optimizer and its learning-rate schedule, from `train.optimizer` and `train.lr_schedule`.

A schedule here is a Keras `LearningRateSchedule`: the rate is a function of the optimizer's
step count, which Keras saves and restores with the optimizer, so a resumed run and any
`steps_per_execution` follow the same curve. `plateau` is the exception (see `schedule`).
"""

from __future__ import annotations

import math

import keras
from keras import ops
from keras.optimizers.schedules import LearningRateSchedule

from mlpipe import MlpipeError
from mlpipe.optimizer_params import OptimizerParams
from mlpipe.params import TrainParams
from mlpipe.training.losses import monitor_mode

OPTIMIZERS = {
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "nadam": keras.optimizers.Nadam,
}


def build_optimizer(
    cfg: OptimizerParams, rate: float | LearningRateSchedule
) -> keras.optimizers.Optimizer:
    """The optimizer `cfg.name` with its own settings, at `rate` (a number or a schedule).

    `cfg.learning_rate` is not read: it may be `auto`, which only the lr_find stage's record
    turns into a number."""
    return OPTIMIZERS[cfg.name](learning_rate=rate, **cfg.settings())


def schedule(train: TrainParams, rate: float, steps_per_epoch: int) -> float | LearningRateSchedule:
    """What the optimizer's rate follows under `train.lr_schedule`, starting from `rate` (the
    peak, for one_cycle): `rate` itself, or a schedule of the optimizer's step."""
    if isinstance(rate, str):
        raise MlpipeError(
            f"train.optimizer.learning_rate is {rate}: pass the number the lr_find stage "
            "recorded (lr_find.read_learning_rate) before building the optimizer"
        )
    cfg = train.lr_schedule
    if cfg.name == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(
            rate,
            decay_steps=cfg.exponential.decay_epochs * steps_per_epoch,
            decay_rate=cfg.exponential.decay_rate,
        )
    if cfg.name == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            rate, decay_steps=train.epochs * steps_per_epoch, alpha=cfg.cosine.alpha
        )
    if cfg.name == "one_cycle":
        return OneCycle(
            rate,
            train.epochs * steps_per_epoch,
            cfg.one_cycle.warmup_fraction,
            cfg.one_cycle.div_factor,
            cfg.one_cycle.final_div_factor,
        )
    # none, and plateau: ReduceLROnPlateau lowers the rate when the monitored validation value
    # stops improving, which no function of the step can know, so it stays a Keras callback
    # (schedule_callbacks) acting on a plain rate.
    return rate


def schedule_callbacks(train: TrainParams) -> list[keras.callbacks.Callback]:
    """The callbacks a schedule needs: ReduceLROnPlateau for `plateau`, none otherwise."""
    cfg = train.lr_schedule
    if cfg.name != "plateau":
        return []
    return [
        keras.callbacks.ReduceLROnPlateau(
            monitor=train.monitor,
            mode=monitor_mode(train.monitor),
            factor=cfg.plateau.factor,
            patience=cfg.plateau.patience,
            min_lr=cfg.plateau.min_learning_rate,
        )
    ]


@keras.saving.register_keras_serializable(package="mlpipe")
class OneCycle(LearningRateSchedule):
    """One-cycle policy: cosine warm-up from peak / div_factor to the peak over the first
    warmup_fraction of the steps, then cosine decay to the start / final_div_factor."""

    def __init__(
        self,
        peak: float,
        total_steps: int,
        warmup_fraction: float,
        div_factor: float,
        final_div_factor: float,
        name: str = "one_cycle",
    ):
        super().__init__()
        self.peak = float(peak)
        self.total_steps = max(int(total_steps), 1)
        self.warmup_fraction = float(warmup_fraction)
        self.div_factor = float(div_factor)
        self.final_div_factor = float(final_div_factor)
        self.name = name
        self.start = self.peak / self.div_factor
        self.end = self.start / self.final_div_factor
        self.warmup_steps = max(round(self.warmup_fraction * self.total_steps), 1)

    def __call__(self, step):
        # In float64, then rounded once to the float32 of the optimizer's rate.
        step = ops.cast(step, "float64")
        rising = _cosine(self.start, self.peak, step / self.warmup_steps)
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        done = ops.minimum((step - self.warmup_steps) / decay_steps, 1.0)
        falling = _cosine(self.peak, self.end, done)
        return ops.cast(ops.where(step < self.warmup_steps, rising, falling), "float32")

    def get_config(self) -> dict:
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_fraction": self.warmup_fraction,
            "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor,
            "name": self.name,
        }


def _cosine(start: float, end: float, fraction):
    return end + (start - end) * (1 + ops.cos(math.pi * fraction)) / 2
