"""The git commands mlpipe runs: what HEAD is, a file as committed, what changed. Imports no
TensorFlow."""

from __future__ import annotations

import subprocess
from pathlib import Path

from mlpipe import MlpipeError


class GitError(MlpipeError):
    """git cannot run, or a git command failed."""


def run(*args: str, cwd: str | Path | None = None) -> str:
    """The output of `git <args>` run in `cwd`; GitError with git's message if it fails."""
    result = _git(args, cwd)
    if result.returncode != 0:
        raise GitError(f"`git {' '.join(args)}` failed:\n{result.stderr.strip()}")
    return result.stdout


def is_commit(ref: str, cwd: str | Path | None = None) -> bool:
    return _git(("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"), cwd).returncode == 0


def head_commit(
    cwd: str | Path | None = None, *, short: bool = False, mark_dirty: bool = False
) -> str | None:
    """HEAD's commit hash (abbreviated with `short`), suffixed `-dirty` with `mark_dirty` when
    tracked files differ from it; None outside git or where git is missing."""
    try:
        commit = run("rev-parse", *(["--short"] if short else []), "HEAD", cwd=cwd).strip()
        dirty = mark_dirty and run("status", "--porcelain", "-uno", cwd=cwd).strip()
    except GitError:
        return None
    return f"{commit}-dirty" if dirty else commit


def committed_text(path: str | Path, ref: str = "HEAD") -> str | None:
    """The file at `path` as committed at `ref` in the repository that holds it; None outside
    git, where git is missing, or where the file is not committed at `ref`."""
    path = Path(path).resolve()
    try:
        root = Path(run("rev-parse", "--show-toplevel", cwd=path.parent).strip())
        return run("show", f"{ref}:{path.relative_to(root).as_posix()}", cwd=path.parent)
    except (GitError, ValueError):
        return None


def _git(args: tuple[str, ...], cwd: str | Path | None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    except OSError as err:
        raise GitError(f"cannot run git ({err}); install git and put it on the PATH") from None
