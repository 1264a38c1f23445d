"""Sweep specs: the YAML file that lists a sweep's trials (a grid, explicit trials, random
draws), expanded into trials and checked against the params schema before anything is queued.
Imports no TensorFlow.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlpipe import MlpipeError
from mlpipe.params import ParamsError, parse_params, read_yaml
from mlpipe.util.overrides import hydra_value


class SweepError(MlpipeError):
    """A sweep spec is invalid, or its experiments cannot be queued or ranked."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Distribution(_Spec):
    """One random param: exactly one of the fields, e.g. `{loguniform: [1.0e-4, 1.0e-1]}`."""

    choice: list[Any] | None = Field(None, min_length=1)
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = Field(None, description="low and high, both included")

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        given = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(type(self).model_fields)}")
        bounds = self.uniform or self.loguniform or self.randint
        if bounds and not bounds[0] < bounds[1]:
            raise ValueError(f"the low bound must be below the high one, got {list(bounds)}")
        if self.loguniform and self.loguniform[0] <= 0:
            raise ValueError("loguniform bounds must be positive")
        return self

    def draw(self, rng: np.random.Generator) -> Any:
        if self.choice is not None:
            return self.choice[int(rng.integers(len(self.choice)))]
        if self.randint is not None:
            return int(rng.integers(self.randint[0], self.randint[1] + 1))
        if self.uniform is not None:
            return _round(rng.uniform(*self.uniform))
        assert self.loguniform is not None  # one of the four is set: the model checks it
        low, high = (math.log(bound) for bound in self.loguniform)
        return _round(math.exp(rng.uniform(low, high)))


class RandomSearch(_Spec):
    trials: int = Field(gt=0)
    seed: int = Field(0, ge=0)
    params: dict[str, Distribution] = Field(min_length=1)


class SweepSpec(_Spec):
    """Trials are the product of `grid`, `trials` and `random`, each with `fixed` on top."""

    description: str = ""
    grid: dict[str, list[Any]] = Field({}, description="every combination of these values")
    trials: list[dict[str, Any]] = Field([], description="explicit trials, e.g. linked params")
    random: RandomSearch | None = None
    fixed: dict[str, Any] = Field({}, description="set in every trial")

    @model_validator(mode="after")
    def _something_varies(self) -> SweepSpec:
        if not (self.grid or self.trials or self.random):
            raise ValueError("nothing to sweep: give `grid`, `trials` or `random`")
        empty = [key for key, values in self.grid.items() if not values]
        if empty:
            raise ValueError(f"grid values of {', '.join(empty)} are empty")
        return self


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    raw = read_yaml(path, SweepError, "sweep spec not found; the examples are in sweeps/")
    try:
        return SweepSpec.model_validate(raw or {})
    except ValidationError as err:
        problems = [
            f"`{'.'.join(map(str, e['loc'])) or 'top level'}`: {e['msg']}" for e in err.errors()
        ]
        raise SweepError(f"{path}: invalid sweep spec:\n  - " + "\n  - ".join(problems)) from None


def expand(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every trial as {dotted param: value}, in a fixed order: grid, then trials, then draws."""
    grid = [dict(zip(spec.grid, values, strict=True)) for values in product(spec.grid.values())]
    draws: list[dict[str, Any]] = [{}]
    if spec.random is not None:
        rng = np.random.default_rng(spec.random.seed)
        draws = [
            {key: dist.draw(rng) for key, dist in spec.random.params.items()}
            for _ in range(spec.random.trials)
        ]
    parts = (grid, spec.trials or [{}], draws)
    trials = []
    for combination in itertools.product(*parts):
        trial: dict[str, Any] = {}
        for part in (*combination, spec.fixed):
            twice = set(trial) & set(part)
            if twice:
                raise SweepError(f"{', '.join(sorted(twice))}: set by two parts of the spec")
            trial.update(part)
        trials.append(trial)
    return trials


def product(values: Collection[list[Any]]) -> list[tuple]:
    return list(itertools.product(*values)) if values else [()]


def check_trials(trials: list[dict[str, Any]], raw_params: dict, spec_name: str) -> None:
    """Fail, naming the param, unless every trial gives valid params that DVC can set."""
    for number, trial in enumerate(trials, start=1):
        raw = copy.deepcopy(raw_params)
        for key, value in trial.items():
            _set(raw, key, value)
        where = f"{spec_name}, trial {number} ({describe(trial)})"
        try:
            params = parse_params(raw, source=where)
        except ParamsError as err:
            raise SweepError(str(err)) from None
        for key in trial:
            if not _has(raw_params, key):
                raise SweepError(
                    f"{where}: `{key}` is a valid param but not written in params.yaml, so "
                    f"`dvc exp run -S` cannot set it; add it to params.yaml"
                )
        if number == 1:
            monitor = params.train.monitor
        elif params.train.monitor != monitor:
            raise SweepError(
                f"{where}: train.monitor differs between trials ({monitor}, "
                f"{params.train.monitor}); trials are ranked on it, so it must be the same"
            )


def describe(trial: dict[str, Any]) -> str:
    return ", ".join(f"{key}={hydra_value(value)}" for key, value in trial.items())


def overrides(trial: dict[str, Any]) -> list[str]:
    """`-S key=value` arguments of `dvc exp run`, in Hydra's override syntax."""
    args = []
    for key, value in trial.items():
        args += ["-S", f"{key}={hydra_value(value)}"]
    return args


def _set(raw: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        if not isinstance(raw.get(part), dict):
            raw[part] = {}
        raw = raw[part]
    raw[last] = value


def _has(raw: Any, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(raw, dict) or part not in raw:
            return False
        raw = raw[part]
    return True


def _round(value: float) -> float:
    return float(f"{value:.3g}")
