"""Sweep specs, their checks and the leaderboard; the last test runs a real sweep in a clone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from mlpipe.tools import cli, sweep, sweep_spec
from mlpipe.tools.sweep_spec import SweepError

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def spec_file(tmp_path: Path, spec: dict, name: str = "spec") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_grid_trials_random_and_fixed_combine_in_order():
    spec = sweep_spec.SweepSpec(
        grid={"a": [1, 2], "b": ["x", "y"]},
        trials=[{"c": 1, "d": 2}, {"c": 3, "d": 4}],
        fixed={"e": True},
    )
    trials = sweep_spec.expand(spec)
    assert len(trials) == 8
    assert trials[0] == {"a": 1, "b": "x", "c": 1, "d": 2, "e": True}
    assert trials[-1] == {"a": 2, "b": "y", "c": 3, "d": 4, "e": True}
    with pytest.raises(SweepError, match="a: set by two parts"):
        sweep_spec.expand(sweep_spec.SweepSpec(grid={"a": [1]}, fixed={"a": 2}))


def test_random_draws_are_seeded_and_within_their_ranges():
    spec = sweep_spec.SweepSpec.model_validate(
        {
            "random": {
                "trials": 20,
                "seed": 3,
                "params": {
                    "lr": {"loguniform": [1e-4, 1e-1]},
                    "p": {"uniform": [0.0, 0.5]},
                    "n": {"randint": [1, 3]},
                    "act": {"choice": ["relu", "elu"]},
                },
            }
        }
    )
    trials = sweep_spec.expand(spec)
    assert trials == sweep_spec.expand(spec)
    assert all(1e-4 <= t["lr"] <= 1e-1 and 0 <= t["p"] <= 0.5 for t in trials)
    assert {t["n"] for t in trials} == {1, 2, 3} and {t["act"] for t in trials} == {"relu", "elu"}
    with pytest.raises(ValueError, match="exactly one"):
        sweep_spec.Distribution(uniform=(0, 1), choice=[1])


def test_overrides_are_in_hydra_syntax():
    trial = {"a.b": 0.001, "c": "auto", "d": [300, 100], "e": True, "f": None, "g": 1e-05}
    assert sweep_spec.overrides(trial) == [
        *("-S", "a.b=0.001"),
        *("-S", "c=auto"),
        *("-S", "d=[300,100]"),
        *("-S", "e=true"),
        *("-S", "f=null"),
        *("-S", "g=1e-05"),
    ]


@pytest.mark.parametrize(
    ("trial", "message"),
    [
        ({"train.optimizer.learnin_rate": 0.1}, "did you mean `learning_rate`?"),
        ({"trian.epochs": 3}, "did you mean `train`?"),
        ({"model.activation": "relu6x"}, "`model.activation`"),
    ],
)
def test_a_bad_trial_fails_naming_the_param(trial, message):
    with pytest.raises(SweepError) as info:
        sweep_spec.check_trials([{"seed": 1}, trial], PARAMS, "bad.yaml")
    assert "bad.yaml, trial 2" in str(info.value) and message in str(info.value)
    assert next(iter(trial)).split(".")[-1] in str(info.value)


def test_trials_must_keep_the_monitor_they_are_ranked_on():
    trials = [{"train.monitor": "val_loss"}, {"train.monitor": "val_accuracy"}]
    with pytest.raises(SweepError, match=r"train\.monitor differs"):
        sweep_spec.check_trials(trials, PARAMS, "s.yaml")


def test_a_bad_spec_fails_before_anything_is_queued(tmp_path, capsys):
    calls = []

    def runner(command, **kwargs):
        calls.append(command)
        raise AssertionError("nothing may run")

    bad = {"grid": {"train.optimizer.learning_rate": [0.001], "model.hiden_units": [[8]]}}
    path = spec_file(tmp_path, bad)
    with pytest.raises(SweepError, match=r"model\.hiden_units"):
        sweep.run_sweep(path, params_file=ROOT / "params.yaml", run=runner)
    assert calls == []
    with pytest.raises(SystemExit) as info:
        cli.main(["sweep", str(path), "--params", str(ROOT / "params.yaml")])
    assert info.value.code == 2
    assert "did you mean `hidden_units`?" in capsys.readouterr().err


@pytest.mark.parametrize("spec", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_example_specs_are_valid(spec):
    job = sweep.Sweep(spec, ROOT / "params.yaml", spec.stem)
    assert len(job.commands()) == len(job.names) >= 4
    assert job.spec.description


def show_json(entries: dict[str, tuple[str, dict]]) -> str:
    """`dvc exp show --json` output holding one experiment per (state, metrics) entry."""
    experiments = []
    for name, (state, metrics) in entries.items():
        data = {
            "params": {"params.yaml": {"data": {"train": {"batch_size": len(name)}}}},
            "metrics": {path: {"data": values} for path, values in metrics.items()},
        }
        executor = None if state == "success" else {"state": state}
        revs = [{"rev": "0" * 40, "name": name, "data": data, "error": None}]
        experiments.append({"revs": revs, "executor": executor, "name": name})
    return json.dumps([{"rev": "workspace", "experiments": None}, {"experiments": experiments}])


def scores(val, test, monitor="val_loss", rate=0.001):
    return {
        "metrics/train.json": {"best_monitor_value": val, "monitor": monitor},
        "metrics/evaluate.json": {"accuracy": test},
        "metrics/lr_find.json": {"learning_rate": rate},
    }


def test_leaderboard_ranks_on_validation_never_on_test():
    found = sweep.results(
        json.loads(
            show_json(
                {
                    "s-1": ("success", scores(0.30, 0.99)),
                    "s-2": ("success", scores(0.10, 0.90, rate=0.004)),
                    "s-3": ("failed", {}),
                    "s-4": ("success", scores(0.20, 0.95)),
                }
            )
        )
    )
    board = sweep.leaderboard(found, ["s-1", "s-2", "s-3", "s-4"], ["train.batch_size"])
    assert board.best == "s-2" and board.failed == ["s-3"]
    assert [row[1] for row in board.rows] == ["s-2", "s-4", "s-1", "s-3"]
    assert board.rows[0] == ["1", "s-2", "3", "0.004", "0.1", "0.9"]
    assert board.columns[-2:] == ["val_loss (ranked)", "test accuracy (not used)"]
    assert board.markdown().count("\n") == 2 + 4

    higher = {
        f"a-{i}": ("success", scores(v, 0.5, "val_accuracy")) for i, v in enumerate([0.8, 0.9])
    }
    found = sweep.results(json.loads(show_json(higher)))
    assert sweep.leaderboard(found, ["a-0", "a-1"], []).best == "a-1"


def test_sweep_refuses_to_clash_with_other_experiments(tmp_path):
    path = spec_file(tmp_path, {"grid": {"seed": [1, 2]}}, "seeds")

    def runner_with(entries):
        def runner(command, **kwargs):
            assert command[:3] == ["dvc", "exp", "show"], command  # nothing is queued
            return subprocess.CompletedProcess(command, 0, show_json(entries), "")

        return runner

    clash = {"seeds-1": ("success", scores(0.1, 0.9))}
    with pytest.raises(SweepError, match="dvc exp remove seeds-1"):
        sweep.run_sweep(path, params_file=ROOT / "params.yaml", run=runner_with(clash))
    foreign = {"other-1": ("queued", {})}
    with pytest.raises(SweepError, match="already holds other-1"):
        sweep.run_sweep(path, params_file=ROOT / "params.yaml", run=runner_with(foreign))


def test_shards_split_the_trials_so_that_together_they_run_each_once(tmp_path, capsys):
    path = spec_file(tmp_path, {"grid": {"seed": [1, 2, 3, 4, 5]}}, "seeds")
    queued = {}
    for index in (1, 2, 3):
        sweep.run_sweep(
            path,
            params_file=ROOT / "params.yaml",
            dry_run=True,
            shard=(index, 3),
            push="origin",
        )
        lines = capsys.readouterr().out.splitlines()
        queued[index] = [line.split(" -n ")[1].split()[0] for line in lines if "--queue" in line]
        assert all(line.endswith(" evaluate") for line in lines if "--queue" in line)
        assert lines[-1] == f"dvc exp push origin {' '.join(queued[index])}"
    assert queued == {1: ["seeds-1", "seeds-4"], 2: ["seeds-2", "seeds-5"], 3: ["seeds-3"]}
    for bad in ("0/2", "3/2", "two"):
        with pytest.raises(SweepError, match="--shard"):
            sweep.parse_shard(bad)


@pytest.mark.slow
@pytest.mark.e2e
def test_two_by_two_sweep_yields_four_ranked_experiments(tmp_path):
    from test_pipeline import TINY, run, stages_run

    clone = tmp_path / "repo"
    run(["git", "clone", "-q", str(ROOT), str(clone)], cwd=ROOT)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section] = {**params[section], **values}
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    spec = {
        "grid": {
            "train.optimizer.learning_rate": [0.001, 0.003],
            "model.hidden_units": [[16], [32]],
        }
    }
    (clone / "sweeps" / "two.yaml").write_text(yaml.safe_dump(spec))
    bad = {"grid": {"train.optimizer.learnin_rate": [0.001, 0.003]}}
    (clone / "sweeps" / "bad.yaml").write_text(yaml.safe_dump(bad))
    run(["git", "add", "-A"], cwd=clone)
    run(["git", "commit", "-qm", "tiny params, test specs"], cwd=clone)
    mlpipe = [sys.executable, "-m", "mlpipe.tools.cli", "sweep"]

    failed = run([*mlpipe, "sweeps/bad.yaml"], cwd=clone, check=False)
    assert failed.returncode == 2 and "train.optimizer.learnin_rate" in failed.stderr
    assert "Queued" not in failed.stdout + failed.stderr
    assert sweep.results(json.loads(run(["dvc", "exp", "show", "--json"], cwd=clone).stdout)) == {}

    result = run([*mlpipe, "sweeps/two.yaml", "-j", "1", "--readme", "README.md"], cwd=clone)
    shown = sweep.results(json.loads(run(["dvc", "exp", "show", "--json"], cwd=clone).stdout))
    names = ["two-1", "two-2", "two-3", "two-4"]
    assert sorted(shown) == names and {shown[n].state for n in names} == {"success"}
    table = (clone / "sweeps/results/two.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "rank" not in line]
    assert len(rows) == 4
    values = {n: shown[n].metrics["metrics/train.json"]["best_monitor_value"] for n in names}
    best = min(values, key=values.get)
    assert rows[0].startswith(f"| 1 | {best} |")
    assert f"dvc exp apply {best}" in result.stdout
    # each experiment ran up to evaluate, not export; applying the best, dvc repro finishes it
    log = result.stdout + result.stderr
    assert "Running stage 'evaluate'" in log and "Running stage 'export'" not in log
    applied = run(["dvc", "exp", "apply", best], cwd=clone, check=False)
    # This clone never ran the pipeline of its commit, so the export that the experiment's
    # dvc.lock still names is in no cache: apply applies the rest and says only that.
    missing = applied.stderr.split("following targets:")[-1].split("Is your cache")[0].split()
    assert applied.returncode == 0 or missing == ["models/export"], applied.stderr
    params = yaml.safe_load((clone / "params.yaml").read_text())
    assert params["model"]["hidden_units"] == shown[best].params["model"]["hidden_units"]
    assert stages_run(run(["dvc", "repro"], cwd=clone)) == {"export"}
