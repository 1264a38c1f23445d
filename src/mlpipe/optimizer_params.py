"""The `train.optimizer` and `train.lr_schedule` sections of the params schema (see params.py,
which holds the rest). Imports no TensorFlow."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from mlpipe.util.validation import Section


class SGDParams(Section):
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False


class RMSpropParams(Section):
    rho: float = Field(0.9, gt=0, lt=1)
    momentum: float = Field(0.0, ge=0, lt=1)
    epsilon: float = Field(1e-7, gt=0)


class AdamParams(Section):
    beta_1: float = Field(0.9, ge=0, lt=1)
    beta_2: float = Field(0.999, ge=0, lt=1)
    epsilon: float = Field(1e-7, gt=0)
    amsgrad: bool = False


class AdamWParams(AdamParams):
    weight_decay: float = Field(0.004, ge=0)


class NadamParams(Section):
    beta_1: float = Field(0.9, ge=0, lt=1)
    beta_2: float = Field(0.999, ge=0, lt=1)
    epsilon: float = Field(1e-7, gt=0)


class OptimizerParams(Section):
    """`name` picks the optimizer; the section of the same name holds its own settings.

    Every optimizer keeps its section, so `-S train.optimizer.name=sgd` switches without edits.
    """

    name: Literal["sgd", "rmsprop", "adam", "adamw", "nadam"] = "adam"
    # No upper bound: an absurd rate is legal and should fail in training, where it is visible.
    learning_rate: Literal["auto"] | Annotated[float, Field(gt=0)] = Field(
        1e-3, description="A number, or `auto`: the rate the lr_find stage suggests."
    )
    sgd: SGDParams = SGDParams()
    rmsprop: RMSpropParams = RMSpropParams()
    adam: AdamParams = AdamParams()
    adamw: AdamWParams = AdamWParams()
    nadam: NadamParams = NadamParams()

    def settings(self) -> dict:
        """The chosen optimizer's own settings, as Keras keyword arguments."""
        return getattr(self, self.name).model_dump()


class ExponentialDecayParams(Section):
    decay_rate: float = Field(0.5, gt=0, le=1, description="Multiply the rate by this ...")
    decay_epochs: float = Field(10.0, gt=0, description="... every this many epochs, smoothly.")


class CosineDecayParams(Section):
    alpha: float = Field(0.0, ge=0, le=1, description="Final rate as a fraction of the first.")


class PlateauParams(Section):
    factor: float = Field(0.5, gt=0, lt=1)
    patience: int = Field(3, ge=0)
    min_learning_rate: float = Field(1e-6, ge=0)


class OneCycleParams(Section):
    warmup_fraction: float = Field(0.3, gt=0, lt=1)
    div_factor: float = Field(25.0, gt=1, description="Start at learning_rate / div_factor.")
    final_div_factor: float = Field(1e4, gt=1, description="End at the start / this.")


class LRScheduleParams(Section):
    """`name` picks the schedule; the section of the same name holds its settings."""

    name: Literal["none", "exponential", "cosine", "plateau", "one_cycle"] = "none"
    exponential: ExponentialDecayParams = ExponentialDecayParams()
    cosine: CosineDecayParams = CosineDecayParams()
    plateau: PlateauParams = PlateauParams()
    one_cycle: OneCycleParams = OneCycleParams()
