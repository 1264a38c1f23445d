"""Sweeps: grid or random searches over params, run as DVC experiments and ranked on validation.

A spec file (YAML, examples in sweeps/; see `sweep_spec`) lists the trials. Every trial is
checked against the params schema before anything is queued. Each is then queued with
`dvc exp run --queue -S ...`, the queue runs with `dvc exp run --run-all -j N`, and the results
are read back with `dvc exp show --json`. The ranking uses the validation value training
monitored (metrics/train.json); the test metric is shown, never used to choose. Imports no
TensorFlow.

Over several machines: `--shard I/N` runs every N-th trial from the I-th (the same partition on
every machine, so together the shards run each trial once), `--push` sends each finished
experiment to the git remote and its outputs to the DVC remote (`dvc exp push`), and
`--show --remote R` fetches the spec's experiments from git remote R and ranks them all.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mlpipe.params import DEFAULT_PARAMS_FILE
from mlpipe.tools.readme import fill_include
from mlpipe.tools.sweep_spec import SweepError, check_trials, expand, load_spec, overrides
from mlpipe.util import git, markdown
from mlpipe.util.paths import EVALUATE_METRICS, LR_FIND_METRICS, TRAIN_METRICS


def _get(raw: Any, key: str) -> Any:
    for part in key.split("."):
        raw = raw.get(part) if isinstance(raw, dict) else None
    return raw


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
            params_files = data.get("params") or {}
            name = experiment.get("name") or rev.get("name") or rev["rev"][:7]
            found[name] = Result(
                name=name,
                state=executor.get("state") or ("failed" if rev.get("error") else "success"),
                params=(params_files.get(DEFAULT_PARAMS_FILE) or {}).get("data") or {},
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
        return markdown.table(self.columns, self.rows) + "\n"


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
        value = result.metrics.get(TRAIN_METRICS, {}).get("best_monitor_value")
        if result.state != "success" or value is None:
            failed.append(name)
            continue
        monitor = result.metrics[TRAIN_METRICS].get("monitor", "val_loss")
        ranked.append((float(value), name))
    maximize = monitor is not None and ("accuracy" in monitor or monitor.endswith("auc"))
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
                _cell(result.metrics.get(LR_FIND_METRICS, {}).get("learning_rate")),
                _cell(value),
                _cell(result.metrics.get(EVALUATE_METRICS, {}).get(test_key)),
            ]
        )
    for name in failed:
        params = [_cell(_get(found[name].params, key)) for key in keys]
        rows.append(["-", name, *params, "-", found[name].state, "-"])
    return Leaderboard(columns, rows, ranked[0][1] if ranked else None, failed)


def _test_key(found) -> str:
    for result in found:
        scores = result.metrics.get(EVALUATE_METRICS, {})
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


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` (1 <= I <= N) as (I, N)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise SweepError(f"--shard {text}: expected I/N, e.g. 2/4") from None
    if not 1 <= index <= count:
        raise SweepError(f"--shard {text}: I must be between 1 and N")
    return index, count


@dataclass
class Sweep:
    """One sweep: its spec, its trials and the names of their experiments. With a shard (I, N),
    the trials this machine runs are every N-th from the I-th; the names stay the sweep's own,
    so the shards' experiments never clash."""

    spec_path: Path
    params_file: Path
    prefix: str
    run: Runner = subprocess.run
    shard: tuple[int, int] = (1, 1)
    # The stage each experiment runs up to (with what it needs), or None for the whole pipeline.
    # The ranking needs train's metrics and the table shows evaluate's; export waits for the
    # chosen experiment (`dvc exp apply`, then `dvc repro`).
    until: str | None = "evaluate"

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
        index, count = self.shard
        self.mine = [i for i in range(len(self.trials)) if i % count == index - 1]

    def commands(self) -> list[list[str]]:
        target = [self.until] if self.until else []
        return [
            [
                "dvc",
                "exp",
                "run",
                "--queue",
                "-n",
                self.names[i],
                *overrides(self.trials[i]),
                *target,
            ]
            for i in self.mine
        ]

    @property
    def my_names(self) -> list[str]:
        return [self.names[i] for i in self.mine]

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
        clash = [name for name in self.my_names if name in existing]
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

    def push(self, remote: str, experiments: list[str]) -> None:
        """Send `experiments` to git remote `remote`, and their outputs to the default DVC
        remote."""
        if experiments:
            self.dvc("exp", "push", remote, *experiments, capture=False)

    def fetch(self, remote: str) -> None:
        """Bring the sweep's experiments that git remote `remote` holds, without their outputs
        (the ranking needs only the metrics, which are in git)."""
        listed = self.dvc("exp", "list", remote, "--name-only").stdout.split()
        held = [name for name in self.names if name in listed]
        if not held:
            raise SweepError(f"git remote {remote} holds none of {', '.join(self.names)}")
        self.dvc("exp", "pull", remote, *held, "--no-cache", "--force", capture=False)

    def leaderboard(self, wanted: list[str] | None = None) -> Leaderboard:
        return leaderboard(self.show(), wanted or self.names, self.keys)

    def report(self, board: Leaderboard, baseline: str, remote: str | None = None) -> str:
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
        finish = f" and `dvc repro` runs the stages after `{self.until}`" if self.until else ""
        if board.best:
            lines.append(
                f"Best: `{board.best}`; `dvc exp apply {board.best}` applies it{finish}.\n"
            )
            if remote:
                lines[-1] = (
                    f"Best: `{board.best}`; `dvc exp pull {remote} {board.best} && dvc exp apply "
                    f"{board.best}` brings its outputs from the DVC remote and applies it, "
                    "without retraining.\n"
                )
        return "\n".join(lines)


def run_sweep(
    spec_path: Path,
    *,
    jobs: int = 1,
    params_file: Path = Path(DEFAULT_PARAMS_FILE),
    prefix: str | None = None,
    results_dir: Path | None = Path("sweeps/results"),
    readme: Path | None = None,
    dry_run: bool = False,
    show_only: bool = False,
    shard: tuple[int, int] = (1, 1),
    push: str | None = None,
    remote: str | None = None,
    until: str | None = "evaluate",
    run: Runner = subprocess.run,
) -> Leaderboard | None:
    """Check, queue and run a sweep (or shard I of N of it), then print its leaderboard and
    write it to <results_dir>/<spec name>.md and into `readme`'s block for that file, if it has
    one; a shard ranks only its own experiments and writes no file.

    `dry_run` prints the commands instead; `show_only` ranks experiments an earlier run left,
    fetched first from git remote `remote` if given; `push` names the git remote that finished
    experiments are pushed to.
    """
    sweep = Sweep(spec_path, params_file, prefix or spec_path.stem, run, shard, until)
    sharded = shard != (1, 1)
    if dry_run:
        for command in sweep.commands():
            print(" ".join(command))
        print(f"dvc exp run --run-all -j {jobs}")
        if push:
            print(f"dvc exp push {push} {' '.join(sweep.my_names)}")
        return None
    if show_only and remote:
        sweep.fetch(remote)
    if not show_only:
        sweep.queue_and_run(jobs)
    board = sweep.leaderboard(sweep.my_names if sharded and not show_only else None)
    if push and not show_only:
        sweep.push(push, [name for name in sweep.my_names if name not in board.failed])
    report = sweep.report(board, git.head_commit(short=True) or "?", remote)
    print(report)
    if results_dir is not None and not (sharded and not show_only):
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
            f"{len(board.failed)} of {len(board.rows)} experiments failed: "
            f"{', '.join(board.failed)}; `dvc queue logs <name>` shows why"
        )
    return board
