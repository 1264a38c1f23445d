"""dvc.yaml must declare what each stage really runs and touches, or DVC skips needed reruns."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PACKAGE = ROOT / "src" / "mlpipe"


def mlpipe_imports(path: Path) -> set[str]:
    """Names of mlpipe modules that `path` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mlpipe"):
            if node.module == "mlpipe":
                found |= {
                    alias.name for alias in node.names if (PACKAGE / f"{alias.name}.py").exists()
                }
                found.add("__init__")
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("mlpipe.")}
    return found


def closure(path: Path) -> set[str]:
    seen: set[str] = set()
    todo = mlpipe_imports(path)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo |= mlpipe_imports(PACKAGE / f"{name}.py")
    return seen


def names(entries: list) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_depends_on_all_code_it_runs(stage):
    script = ROOT / "stages" / f"{stage}.py"
    deps = set(STAGES[stage]["deps"])
    assert f"stages/{stage}.py" in deps
    needed = {f"src/mlpipe/{name}.py" for name in closure(script)}
    assert needed - deps == set(), f"{stage} runs code it does not declare"
    assert {d for d in deps if d.startswith("src/")} - needed == set(), f"{stage} over-declares"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_paths_come_from_the_command(stage):
    spec = STAGES[stage]
    paths = [d for d in spec["deps"] if not d.endswith(".py")]
    paths += names(spec.get("outs", [])) + names(spec.get("metrics", []))
    for path in paths:
        assert path in spec["cmd"], f"{stage}: {path} is declared but not passed to the script"


def sections_read(script: Path) -> set[str]:
    """Top-level params sections a stage script reads as `params.<section>`."""
    return {
        node.attr
        for node in ast.walk(ast.parse(script.read_text()))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "params"
    }


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_declares_exactly_the_params_it_reads(stage):
    from mlpipe.export import MODEL_SECTIONS

    read = sections_read(ROOT / "stages" / f"{stage}.py")
    if stage == "export":  # it hashes these sections into the metadata
        read |= set(MODEL_SECTIONS)
    assert set(STAGES[stage]["params"]) == read
