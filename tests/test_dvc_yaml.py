"""dvc.yaml must declare what each stage really runs and touches, or DVC skips needed reruns."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_files(dotted: str) -> set[str]:
    """The files Python runs to import `dotted` (an mlpipe module or package): its own file and
    the `__init__.py` of every package above it."""
    parts = dotted.split(".")
    found = set()
    for depth in range(1, len(parts) + 1):
        path = ROOT / "src" / Path(*parts[:depth])
        if path.is_dir():
            found.add(str((path / "__init__.py").relative_to(ROOT)))
        elif path.with_suffix(".py").exists():
            found.add(str(path.with_suffix(".py").relative_to(ROOT)))
    return found


def mlpipe_imports(path: Path) -> set[str]:
    """Files of mlpipe that `path` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.split(".")[0] == "mlpipe"
        ):
            found |= module_files(node.module)
            for alias in node.names:  # `from mlpipe.training import fit` imports a module
                found |= module_files(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "mlpipe":
                    found |= module_files(alias.name)
    return found


def closure(path: Path) -> set[str]:
    seen: set[str] = set()
    todo = mlpipe_imports(path)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo |= mlpipe_imports(ROOT / name)
    return seen


def names(entries: list) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_depends_on_all_code_it_runs(stage):
    script = ROOT / "stages" / f"{stage}.py"
    deps = set(STAGES[stage]["deps"])
    assert f"stages/{stage}.py" in deps
    needed = closure(script)
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
    from mlpipe.serving.export import MODEL_SECTIONS

    read = params_read(ROOT / "stages" / f"{stage}.py")
    if stage == "export":  # export_model reads `export` and hashes these into the metadata
        read |= {*MODEL_SECTIONS, "export"}
    declared = set(STAGES[stage]["params"])
    # Same sections; a section may be declared key by key, but then every read must be covered.
    assert {key.split(".")[0] for key in declared} == {chain.split(".")[0] for chain in read}
    assert {c for c in read if not any(covers(k, c) for k in declared)} == set(), "undeclared"
    assert {k for k in declared if not any(covers(k, c) for c in read)} == set(), "unread"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_outputs_outlive_a_failed_run(stage):
    """DVC deletes an output before its stage runs unless it is `persist`; the stage then
    replaces it only on success, and clears a killed run's leftovers (`stage.outputs`)."""
    spec = STAGES[stage]
    entries = spec.get("outs", []) + spec.get("metrics", []) + spec.get("plots", [])
    for entry in entries:
        assert isinstance(entry, dict), f"{stage}: {entry} is not persist"
        assert next(iter(entry.values())).get("persist") is True, f"{stage}: {entry}"
    assert "stage.outputs(" in (ROOT / "stages" / f"{stage}.py").read_text()
