"""The plumbing every stage and tool shares: atomic writes, git, Markdown tables, error exits."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

import pytest

from mlpipe import MlpipeError
from mlpipe.util import files, git, markdown, stage


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out" / "scores.json"
    files.write_json(target, {"b": 1, "a": 2})
    assert target.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    with pytest.raises(RuntimeError), files.atomic_path(target, suffix=".keras") as tmp:
        assert tmp.name.startswith(".scores.json.") and tmp.name.endswith(".keras")
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    assert [p.name for p in target.parent.iterdir()] == ["scores.json"]


def test_a_folder_is_replaced_whole(tmp_path):
    target = tmp_path / "model"
    with files.atomic_dir(target) as tmp:
        (tmp / "old.txt").write_text("old")
    with files.atomic_path(target, folder=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_several_outputs_are_replaced_only_once_all_are_written(tmp_path):
    model, summary = tmp_path / "model", tmp_path / "summary.txt"
    with files.atomic_paths(model, summary, folders=[model]) as (folder, text):
        (folder / "weights").write_text("1")
        text.write_text("run 1")
    with (
        pytest.raises(RuntimeError),
        files.atomic_paths(model, summary, folders=[model]) as (folder, text),
    ):
        (folder / "weights").write_text("2")
        text.write_text("run 2")
        raise RuntimeError("failed after writing both")
    assert (model / "weights").read_text() == "1" and summary.read_text() == "run 1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "summary.txt"]


def test_a_killed_runs_leftovers_are_cleared_and_an_old_folder_put_back(tmp_path):
    # Left by kills: temporaries of two outputs, and a folder moved aside before its new
    # version took its place.
    (tmp_path / "scores.json").write_text("kept")
    for name in (".scores.json.ab_12cd9.tmp", ".model.zz99yy88.tmp.keras"):
        (tmp_path / name).write_text("half")
    (tmp_path / ".model.k3j4h5g6.tmp").mkdir()
    (tmp_path / ".model.old").mkdir()
    (tmp_path / ".model.old" / "weights").write_text("previous")
    # Not leftovers of these outputs: another writer's temporary, the backup a resumed
    # training run needs, a user's file
    keep = [".other.json.ab_12cd9.tmp", ".model.backup", ".model.checkpoint.weights.h5"]
    keep += [".scores.json.notes.tmp", "model.old"]
    for name in keep:
        (tmp_path / name).write_text("not mine")
    files.clean_stale(tmp_path / "scores.json", tmp_path / "model")
    assert (tmp_path / "model" / "weights").read_text() == "previous"
    assert (tmp_path / "scores.json").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*keep, "model", "scores.json"])
    # With the new folder in place, the old one aside is only a leftover.
    (tmp_path / ".model.old").mkdir()
    files.clean_stale(tmp_path / "model", tmp_path / "missing" / "out.json")
    assert not (tmp_path / ".model.old").exists() and (tmp_path / "model").is_dir()


@pytest.mark.parametrize("action", ["fail", "kill"])
def test_the_fault_hook_stops_a_write_with_the_new_output_beside_the_old(tmp_path, action):
    script = (
        "from mlpipe.util import files\n"
        "with files.atomic_dir('out') as tmp:\n"
        "    (tmp / 'a').write_text('new')\n"
    )
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a").write_text("old")
    env = {**os.environ, files.FAULT_VARIABLE: f"fail:other,{action}:out"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env)
    assert result.returncode == (-9 if action == "kill" else 1)
    assert (tmp_path / "out" / "a").read_text() == "old"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "out"]
    assert len(leftovers) == (1 if action == "kill" else 0)
    files.clean_stale(tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failed_stage_says_which_outputs_it_replaced(tmp_path, capsys):
    first, second = tmp_path / "a.json", tmp_path / "b"
    files.write_json(first, {"run": 1})
    stage.outputs(first, second)
    assert stage.replaced_outputs() == []

    def main():
        files.write_json(first, {"run": 2})
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as info:
        stage.run(main)
    assert info.value.code == 130
    assert capsys.readouterr().err == f"interrupted: replaced {first}; kept the previous {second}\n"


def test_markdown_table():
    assert markdown.table(["a", "b"], [["1", "2"], ["3", ""]]) == (
        "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 |  |"
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_helpers(tmp_path):
    assert git.head_commit(tmp_path) is None
    assert git.committed_text(tmp_path / "params.yaml") is None
    with pytest.raises(git.GitError, match=r"`git log` failed:\n.*not a git repository"):
        git.run("log", cwd=tmp_path)
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    for args in (["init", "-q"], ["add", "params.yaml"], ["commit", "-qm", "params"]):
        subprocess.run([*command, *args], cwd=tmp_path, check=True)
    head = git.head_commit(tmp_path)
    assert len(head) == 40 and head.startswith(git.head_commit(tmp_path, short=True))
    assert git.is_commit("HEAD", tmp_path) and not git.is_commit("nope", tmp_path)
    (tmp_path / "params.yaml").write_text("seed: 2\n")
    assert git.head_commit(tmp_path, mark_dirty=True) == f"{head}-dirty"
    assert git.committed_text(tmp_path / "params.yaml") == "seed: 1\n"
    assert git.committed_text(tmp_path / "other.yaml") is None


def test_a_user_error_exits_2_with_its_message_alone(capsys):
    with pytest.raises(SystemExit) as info, stage.user_errors():
        raise MlpipeError("data.target: column `y` not found")
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: data.target: column `y` not found\n"
    with pytest.raises(ValueError), stage.user_errors():
        raise ValueError("a bug keeps its traceback")


def test_outputs_get_the_permissions_of_ordinary_files(tmp_path):
    old = os.umask(0o022)
    try:
        files.write_text(tmp_path / "out" / "a.txt", "x")
        with files.atomic_dir(tmp_path / "folder") as folder:
            (folder / "inner").mkdir()
            (folder / "inner" / "b.bin").write_bytes(b"y")
    finally:
        os.umask(old)
    modes = {
        p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode)
        for p in [tmp_path / "out" / "a.txt", *(tmp_path / "folder").rglob("*")]
    }
    modes["folder"] = stat.S_IMODE((tmp_path / "folder").stat().st_mode)
    assert modes == {
        "out/a.txt": 0o644,
        "folder": 0o755,
        "folder/inner": 0o755,
        "folder/inner/b.bin": 0o644,
    }
