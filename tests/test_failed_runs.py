"""A stage that fails or is killed keeps the last good outputs, through the real `dvc repro`.

One clone for the module: a good run, then failures of every stage. The failures that the
params cannot cause at run time are injected at the worst moment, every new output written
beside the previous one and about to replace it (the test hook `files.FAULT_VARIABLE`).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from test_pipeline import STAGES, clone_of_root, run, run_tiny, stages_run

from conftest import ROOT
from mlpipe.util.files import FAULT_VARIABLE

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SPEC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
# Each stage's outputs as dvc.yaml declares them, and train's TensorBoard run, which it is not.
OUTPUTS = {
    stage: [next(iter(e)) for e in spec["outs"] + spec.get("metrics", [])]
    for stage, spec in SPEC.items()
}
OUTPUTS["train"].append("logs/tensorboard/workspace")
# The output each stage replaces first: failing there, it has written everything and replaced
# nothing.
FIRST_REPLACED = {
    "prepare": "prepared",
    "build": "untrained",
    "lr_find": "lr_find.csv",
    "baselines": "baselines.json",
    "train": "model",
    "evaluate": "evaluate",
    "export": "export",
}
# Leftovers of `files.atomic_path` and `files.replace_folder`; not the `.<name>.backup` of a
# training run, which resumes it.
LEFTOVER = re.compile(r"\..+\.(old|[a-z0-9_]{8}\.tmp.*)")


def snapshot(repo: Path) -> dict[str, bytes]:
    """The bytes of every output file of every stage, and of dvc.lock."""
    found = {"dvc.lock": (repo / "dvc.lock").read_bytes()}
    for path in (repo / out for outs in OUTPUTS.values() for out in outs):
        for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
            if item.is_file():
                found[item.relative_to(repo).as_posix()] = item.read_bytes()
    return found


def leftovers(repo: Path) -> list[str]:
    folders = {(repo / out).parent for outs in OUTPUTS.values() for out in outs}
    return sorted(
        p.relative_to(repo).as_posix()
        for folder in folders
        for p in folder.iterdir()
        if LEFTOVER.fullmatch(p.name)
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return run_tiny(clone_of_root(tmp_path_factory, "failures"))


def test_every_stage_failing_keeps_its_outputs_and_clears_a_killed_runs_leftovers(repo):
    before = snapshot(repo)
    # What kills left: a temporary beside every output, and the build stage's folder moved
    # aside before its new one took its place. And another program's temporary, not ours.
    for out in (o for outs in OUTPUTS.values() for o in outs):
        (repo / out).with_name(f".{Path(out).name}.k1ll3d_0.tmp").write_text("half")
    (repo / "models/untrained").rename(repo / "models/.untrained.old")
    (repo / "models/.untrained.k1ll3d_1.tmp").mkdir()
    (repo / "metrics/.notes.txt.k1ll3d_2.tmp").write_text("someone else's")

    faults = ",".join(f"fail:{name}" for name in FIRST_REPLACED.values())
    result = run(
        ["dvc", "repro", "--force", "--single-item", "--keep-going", *SPEC],
        cwd=repo,
        check=False,
        env={FAULT_VARIABLE: faults},
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert stages_run(result) == STAGES
    assert len(re.findall(r"^OSError: .* write failed on purpose", output, re.M)) == len(STAGES)
    assert output.count("no output of this stage was replaced") == len(STAGES)
    assert snapshot(repo) == before
    assert leftovers(repo) == ["metrics/.notes.txt.k1ll3d_2.tmp"]
    (repo / "metrics/.notes.txt.k1ll3d_2.tmp").unlink()
    assert run(["dvc", "status"], cwd=repo).stdout.strip().endswith("up to date.")


def test_a_bad_param_found_at_run_time_keeps_the_model_and_metrics(repo):
    """The issue's example: DVC accepts the value, the train stage refuses it."""
    before = snapshot(repo)
    try:
        result = run(["dvc", "exp", "run", "-S", "train.epochs=-5"], cwd=repo, check=False)
    finally:
        run(["git", "checkout", "--", "params.yaml"], cwd=repo)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "train.epochs" in output
    assert stages_run(result) == {"train"}
    assert "no output of this stage was replaced" in output
    assert snapshot(repo) == before


def test_export_killed_while_writing_keeps_the_export_and_the_next_run_clears_it(repo):
    before = snapshot(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["export"]["h5"] = True
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    killed = run(["dvc", "repro"], cwd=repo, check=False, env={FAULT_VARIABLE: "kill:export"})
    assert killed.returncode != 0 and stages_run(killed) == {"export"}
    assert snapshot(repo) == before
    (temporary,) = leftovers(repo)
    assert re.fullmatch(r"models/\.export\.[a-z0-9_]{8}\.tmp", temporary)
    assert (repo / temporary / "model.h5").is_file()  # the new export, whole, never put in place

    again = run(["dvc", "repro"], cwd=repo)
    assert stages_run(again) == {"export"}
    assert leftovers(repo) == []
    assert (repo / "models/export/model.h5").is_file()
    assert snapshot(repo)["dvc.lock"] != before["dvc.lock"]
    assert run(["dvc", "status"], cwd=repo).stdout.strip().endswith("up to date.")
