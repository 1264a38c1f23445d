"""Sweeps: grid or random searches over params, run as DVC experiments and ranked on validation.

A spec file (YAML, examples in sweeps/) lists the trials. Every trial is checked against the
params schema before anything is queued. Each is then queued with `dvc exp run --queue -S ...`,
the queue runs with `dvc exp run --run-all -j N`, and the results are read back with
`dvc exp show --json`. The ranking uses the validation value training monitored
(metrics/train.json); the test metric is shown, never used to choose. Imports no TensorFlow.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import subprocess
import sys
import textwrap
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlpipe import MlpipeError
from mlpipe.params import ParamsError, parse_params, read_yaml
from mlpipe.tools.report import fill_include

OBJECTIVE_FILE = "metrics/train.json"
TEST_FILE = "metrics/evaluate.json"
LR_FILE = "metrics/lr_find.json"


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
        low, high = np.log(self.loguniform)  # type: ignore[arg-type]  # the one bound given
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
    return ", ".join(f"{key}={_hydra(value)}" for key, value in trial.items())


def overrides(trial: dict[str, Any]) -> list[str]:
    """`-S key=value` arguments of `dvc exp run`, in Hydra's override syntax."""
    args = []
    for key, value in trial.items():
        args += ["-S", f"{key}={_hydra(value)}"]
    return args


def _hydra(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):  # quoted, so `auto` or `1e-3` stay text
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_hydra(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra(v)}" for k, v in value.items()) + "}"
    raise SweepError(f"cannot pass {value!r} ({type(value).__name__}) to `dvc exp run -S`")


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


def _get(raw: Any, key: str) -> Any:
    for part in key.split("."):
        raw = raw.get(part) if isinstance(raw, dict) else None
    return raw


def _round(value: float) -> float:
    return float(f"{value:.3g}")


def names(prefix: str, count: int) -> list[str]:
    width = len(str(count))
    return [f"{prefix}-{i:0{width}d}" for i in range(1, count + 1)]


@dataclass(frozen=True)
class Result:
    name: str
    state: str  # success, failed, queued or running
    params: dict
    metrics: dict  # file -> values


def results(show: list[dict]) -> dict[str, Result]:
    """The experiments in `dvc exp show --json` output, by name."""
    found = {}
    for baseline in show:
        for experiment in baseline.get("experiments") or []:
            rev = experiment["revs"][0]
            data = rev.get("data") or {}
            executor = experiment.get("executor") or {}
            name = experiment.get("name") or rev.get("name") or rev["rev"][:7]
            found[name] = Result(
                name=name,
                state=executor.get("state") or ("failed" if rev.get("error") else "success"),
                params=((data.get("params") or {}).get("params.yaml") or {}).get("data") or {},
                metrics={
                    path: (entry or {}).get("data") or {}
                    for path, entry in (data.get("metrics") or {}).items()
                },
            )
    return found


@dataclass(frozen=True)
class Leaderboard:
    """Rows best first: the swept params, the rate used, the ranked validation value, the test
    metric. Experiments without a validation value (failed) come last."""

    columns: list[str]
    rows: list[list[str]]
    best: str | None
    failed: list[str]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"


def leaderboard(found: dict[str, Result], wanted: list[str], keys: list[str]) -> Leaderboard:
    missing = [name for name in wanted if name not in found]
    if missing:
        raise SweepError(
            f"`dvc exp show` lists none of {', '.join(missing)}; were they removed, or queued on "
            "another commit? (`dvc exp show -A` lists all)"
        )
    ranked, failed = [], []
    monitor = None
    for name in wanted:
        result = found[name]
        value = result.metrics.get(OBJECTIVE_FILE, {}).get("best_monitor_value")
        if result.state != "success" or value is None:
            failed.append(name)
            continue
        monitor = result.metrics[OBJECTIVE_FILE].get("monitor", "val_loss")
        ranked.append((float(value), name))
    maximize = monitor is not None and "accuracy" in monitor
    ranked.sort(key=lambda item: (-item[0] if maximize else item[0], item[1]))

    test_key = _test_key(found[name] for name in wanted)
    columns = ["rank", "experiment", *keys, "rate used", f"{monitor or 'validation'} (ranked)"]
    columns.append(f"test {test_key} (not used)")
    rows = []
    for rank, (value, name) in enumerate(ranked, start=1):
        result = found[name]
        rows.append(
            [
                str(rank),
                name,
                *(_cell(_get(result.params, key)) for key in keys),
                _cell(result.metrics.get(LR_FILE, {}).get("learning_rate")),
                _cell(value),
                _cell(result.metrics.get(TEST_FILE, {}).get(test_key)),
            ]
        )
    for name in failed:
        params = [_cell(_get(found[name].params, key)) for key in keys]
        rows.append(["-", name, *params, "-", found[name].state, "-"])
    return Leaderboard(columns, rows, ranked[0][1] if ranked else None, failed)


def _test_key(found) -> str:
    for result in found:
        scores = result.metrics.get(TEST_FILE, {})
        for key in ("accuracy", "rmse"):
            if key in scores:
                return key
    return "accuracy"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


Runner = Callable[..., subprocess.CompletedProcess]


@dataclass
class Sweep:
    """One sweep: its spec, its trials and the names of their experiments."""

    spec_path: Path
    params_file: Path
    prefix: str
    run: Runner = subprocess.run

    def __post_init__(self):
        self.spec = load_spec(self.spec_path)
        self.trials = expand(self.spec)
        try:
            raw = yaml.safe_load(self.params_file.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise SweepError(f"{self.params_file}: cannot read the params: {err}") from None
        check_trials(self.trials, raw, str(self.spec_path))
        self.names = names(self.prefix, len(self.trials))
        self.keys = list(dict.fromkeys(key for trial in self.trials for key in trial))

    def commands(self) -> list[list[str]]:
        return [
            ["dvc", "exp", "run", "--queue", "-n", name, *overrides(trial)]
            for name, trial in zip(self.names, self.trials, strict=True)
        ]

    def dvc(self, *args: str, capture: bool = True) -> subprocess.CompletedProcess:
        output = {"capture_output": True} if capture else {"stdout": sys.stderr}
        result = self.run(["dvc", *args], text=True, **output)
        if result.returncode != 0:
            output = (result.stderr or "") + (result.stdout or "")
            raise SweepError(f"`dvc {' '.join(args)}` failed:\n{output.strip()}")
        return result

    def show(self) -> dict[str, Result]:
        return results(json.loads(self.dvc("exp", "show", "--json").stdout))

    def queue_and_run(self, jobs: int) -> None:
        """Queue every trial, then run the queue; refuse if that would run or clash with
        experiments that are not this sweep's."""
        existing = self.show()
        clash = [name for name in self.names if name in existing]
        if clash:
            raise SweepError(
                f"experiments named {', '.join(clash)} already exist: remove them "
                f"(`dvc exp remove {' '.join(clash)}`) or pass another --prefix"
            )
        waiting = [r.name for r in existing.values() if r.state in ("queued", "running")]
        if waiting:
            raise SweepError(
                f"the experiment queue already holds {', '.join(waiting)}, which the sweep would "
                "run too: run them first (`dvc exp run --run-all`) or remove them "
                "(`dvc queue remove --queued`)"
            )
        for command in self.commands():
            print(" ".join(command), file=sys.stderr)
            self.dvc(*command[1:])
        # DVC follows each experiment's log on stdout; stdout is kept for the leaderboard.
        self.dvc("exp", "run", "--run-all", "-j", str(jobs), capture=False)

    def leaderboard(self) -> Leaderboard:
        return leaderboard(self.show(), self.names, self.keys)

    def report(self, board: Leaderboard, baseline: str) -> str:
        """The results file: what ran, the table, and how to apply the best."""
        spec = self.spec_path.as_posix()
        summary = (
            f"Sweep `{spec}`: {len(self.trials)} experiments on commit `{baseline}`, ranked on "
            f"the validation value training monitored. Regenerate with `make sweep SPEC={spec}`."
        )
        lines = [textwrap.fill(summary, 100), ""]
        if self.spec.description:
            lines[0:0] = [textwrap.fill(self.spec.description.strip(), 100), ""]
        lines.append(board.markdown())
        if board.best:
            lines.append(f"Best: `{board.best}`; `dvc exp apply {board.best}` applies it.\n")
        return "\n".join(lines)


def run_sweep(
    spec_path: Path,
    *,
    jobs: int = 1,
    params_file: Path = Path("params.yaml"),
    prefix: str | None = None,
    results_dir: Path | None = Path("sweeps/results"),
    readme: Path | None = None,
    dry_run: bool = False,
    show_only: bool = False,
    run: Runner = subprocess.run,
) -> Leaderboard | None:
    """Check, queue and run a sweep, then print its leaderboard and write it to
    <results_dir>/<spec name>.md and into `readme`'s block for that file, if it has one.

    `dry_run` prints the commands instead; `show_only` ranks experiments an earlier run left.
    """
    sweep = Sweep(spec_path, params_file, prefix or spec_path.stem, run)
    if dry_run:
        for command in sweep.commands():
            print(" ".join(command))
        print(f"dvc exp run --run-all -j {jobs}")
        return None
    if not show_only:
        sweep.queue_and_run(jobs)
    board = sweep.leaderboard()
    baseline = sweep.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    report = sweep.report(board, baseline.stdout.strip() or "?")
    print(report)
    if results_dir is not None:
        from mlpipe.util import files

        target = results_dir / f"{spec_path.stem}.md"
        files.write_text(target, report)
        print(f"wrote {target}", file=sys.stderr)
        if readme is not None and readme.is_file():
            text = readme.read_text()
            updated = fill_include(text, target.as_posix(), report)
            if updated != text:
                files.write_text(readme, updated)
                print(f"updated the block for {target} in {readme}", file=sys.stderr)
    if board.failed:
        raise SweepError(
            f"{len(board.failed)} of {len(sweep.names)} experiments failed: "
            f"{', '.join(board.failed)}; `dvc queue logs <name>` shows why"
        )
    return board
