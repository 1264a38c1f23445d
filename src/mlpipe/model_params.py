"""The `model` section of the params schema (see params.py, which holds the rest): the
network's API, size and layers, and the tabular encodings. Imports no TensorFlow."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    model_validator,
)

from mlpipe.util.validation import Section


class PeriodicParams(Section):
    """PLR embeddings (Gorishniy et al. 2022): per numeric feature, `frequencies` learned
    frequencies c ~ N(0, sigma), [sin(2 pi c x), cos(2 pi c x)], a linear map to `width`, ReLU,
    of the feature scaled as `scaling` says."""

    frequencies: int = Field(48, gt=0)
    sigma: float = Field(0.1, gt=0)
    width: int = Field(24, gt=0)
    scaling: Literal["robust", "quantile"] = Field(
        "robust",
        description="what the embeddings read: the robust-scaled feature, or its training "
        "quantiles mapped to the normal's (as in the paper).",
    )


class ModelParams(Section):
    api: Literal["sequential", "functional", "subclass"] = Field(
        "sequential",
        description="Keras API the network is built with: a Sequential stack, a Functional "
        "Wide & Deep network, or the WideAndDeepModel subclass.",
    )
    hidden_units: list[Annotated[int, Field(gt=0)]] = Field([300, 100], min_length=1)
    activation: Literal[
        "relu", "leaky_relu", "elu", "selu", "gelu", "silu", "swish", "tanh", "sigmoid"
    ] = "relu"
    kernel_initializer: Literal[
        "he_normal",
        "he_uniform",
        "glorot_normal",
        "glorot_uniform",
        "lecun_normal",
        "lecun_uniform",
    ] = "he_normal"
    clip_inputs: float | None = Field(
        5.0,
        gt=0,
        description="Clip standardized features to +/- this many training standard deviations.",
    )
    dropout: float = Field(0.0, ge=0, lt=1)
    batch_norm: bool = False
    l2: float = Field(0.0, ge=0, description="L2 penalty on the hidden layers' kernels.")
    wide_columns: list[str] | None = Field(
        None,
        min_length=1,
        description="functional, subclass: features of the wide path; null: all.",
    )
    deep_columns: list[str] | None = Field(
        None,
        min_length=1,
        description="functional, subclass: features of the deep path; null: all.",
    )
    aux_output: bool = Field(
        False, description="functional, subclass: an auxiliary output on the deep path."
    )
    residual_blocks: int = Field(
        0, ge=0, description="subclass: residual blocks after the hidden layers, looped in call()."
    )
    numeric_encoding: Literal["standardize", "robust", "quantile", "periodic"] = Field(
        "standardize",
        description="standardize: (x - mean) / std, clipped to clip_inputs; robust: (x - median) "
        "/ quantile range, smoothly clipped (RealMLP); quantile: the training quantiles mapped "
        "to the standard normal's; periodic: learned periodic embeddings per feature (PLR) of "
        "the feature scaled as periodic.scaling says.",
    )
    periodic: PeriodicParams = PeriodicParams()
    categorical_encoding: Literal["one_hot", "embedding"] = Field(
        "one_hot",
        description="one_hot, or a learned embedding per column of min(50, round(1.6 * n ** "
        "0.56)) numbers for n slots (categories, unseen, missing).",
    )
    ensemble_size: int = Field(
        1, ge=1, description="Members of an ensemble inside the model; it predicts their mean."
    )
    ensemble_weights: Literal["shared", "independent"] = Field(
        "shared",
        description="ensemble_size > 1. shared: the members share the hidden layers, each "
        "scaling the encoded features by its own vector (TabM-mini); independent: each member "
        "has its own hidden layers, k MLPs in one graph (TabM's packed ensemble).",
    )
    standardize_target: bool = Field(
        False,
        description="regression: the network predicts (y - mean) / std of the training split; "
        "a last layer maps back to y. No effect on classification.",
    )

    @model_validator(mode="after")
    def _settings_of_the_api(self) -> ModelParams:
        if self.api == "sequential":
            used = [
                f"{name}: {value}"
                for name, value in (
                    ("wide_columns", self.wide_columns),
                    ("deep_columns", self.deep_columns),
                    ("aux_output", self.aux_output),
                )
                if value
            ]
            if used:
                raise ValueError(
                    f"{', '.join(used)} apply to api functional or subclass; a Sequential stack "
                    "has one input and one output. Set api, or reset them to null/false"
                )
        tabular = [
            f"{name}: {value}"
            for name, value, default in (
                ("numeric_encoding", self.numeric_encoding, "standardize"),
                ("categorical_encoding", self.categorical_encoding, "one_hot"),
                ("ensemble_size", self.ensemble_size, 1),
                ("standardize_target", self.standardize_target, False),
            )
            if value != default
        ]
        if tabular and self.api != "sequential":
            raise ValueError(
                f"{', '.join(tabular)} apply to api sequential; the Wide & Deep networks take "
                "the standardized, one-hot encoded paths. Set api to sequential, or reset them"
            )
        if self.ensemble_weights == "independent" and self.batch_norm and self.ensemble_size > 1:
            raise ValueError(
                "batch_norm: true with ensemble_weights: independent would share each layer's "
                "batch statistics between members that share nothing else; set batch_norm to "
                "false, or ensemble_weights to shared"
            )
        if self.residual_blocks and self.api != "subclass":
            raise ValueError(
                f"residual_blocks: {self.residual_blocks} applies to api subclass, whose call() "
                "loops over them; set it to 0 or api to subclass"
            )
        return self
