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


def params_read(script: Path) -> set[str]:
    """What a stage script reads of the params, as dotted paths: `params.train.batch_size` reads
    `train.batch_size`, a section passed on whole (`params.train`) reads `train`."""
    chains = set()
    inner = set()  # attribute nodes that are part of a longer chain
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Attribute):
            parts, value = [node.attr], node.value
            while isinstance(value, ast.Attribute):
                inner.add(id(value))
                parts.insert(0, value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id == "params" and id(node) not in inner:
                chains.add(".".join(parts))
    return chains


def covers(key: str, chain: str) -> bool:
    return chain == key or chain.startswith(key + ".")


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_declares_exactly_the_params_it_reads(stage):
    from mlpipe.export import MODEL_SECTIONS

    read = params_read(ROOT / "stages" / f"{stage}.py")
    if stage == "export":  # it hashes these sections into the metadata
        read |= set(MODEL_SECTIONS)
    declared = set(STAGES[stage]["params"])
    # Same sections; a section may be declared key by key, but then every read must be covered.
    assert {key.split(".")[0] for key in declared} == {chain.split(".")[0] for chain in read}
    assert {c for c in read if not any(covers(k, c) for k in declared)} == set(), "undeclared"
    assert {k for k in declared if not any(covers(k, c) for c in read)} == set(), "unread"
