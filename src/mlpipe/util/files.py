"""File writes that never leave a half-written output behind, and small file helpers."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger("mlpipe.files")

# Test hook, for the tests that stop a stage through the real `dvc repro`: a comma-separated list
# of `fail:NAME` or `kill:NAME`. The write of an output named NAME then fails (or the process
# dies, SIGKILL) at the worst moment, with the whole new output written beside the previous one
# and about to replace it. Unset, as everywhere but in tests, it does nothing.
FAULT_VARIABLE = "MLPIPE_TEST_FAULT"


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str = "", folder: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write, an empty file (or folder, with `folder`),
    that replaces `path` whole if the block succeeds and is removed if it fails: a reader never
    sees half an output, and a failure leaves the previous one in place.

    The temporary is `.<name>.<random>.tmp<suffix>`, for writers that take the format from the
    name (Keras: `.keras`, `.weights.h5`); `clean_stale` removes one that a kill left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}."
    if folder:
        tmp = Path(tempfile.mkdtemp(".tmp" + suffix, prefix, path.parent))
    else:
        fd, name = tempfile.mkstemp(".tmp" + suffix, prefix, path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        _readable(tmp)
        _injected_fault(path)
        if folder:
            replace_folder(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        if folder:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_paths(*paths: Path, folders: Collection[Path] = ()) -> Iterator[list[Path]]:
    """`atomic_path` for several outputs, those in `folders` as folders: a temporary for each,
    which replace them in the order given once the whole block has succeeded, so that a failure
    while any of them is written replaces none."""
    with contextlib.ExitStack() as stack:
        # The stack exits last in, first out: enter in reverse to replace in order.
        temporaries = [
            stack.enter_context(atomic_path(path, folder=path in folders))
            for path in reversed(paths)
        ]
        yield temporaries[::-1]


def _injected_fault(path: Path) -> None:
    for fault in filter(None, os.environ.get(FAULT_VARIABLE, "").split(",")):
        action, _, name = fault.partition(":")
        if name == path.name:
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(f"{path}: write failed on purpose ({FAULT_VARIABLE}={fault})")


def clean_stale(*outputs: str | Path) -> None:
    """Clear what a killed writer of `outputs` left beside them: the temporaries of
    `atomic_path`, and the previous folder `replace_folder` moves aside, which is put back when
    the kill came before the new one took its place.

    Only these outputs' own leftovers are touched, never those of another writer's files; a
    stage calls it with its outputs before it writes (`stage.outputs`).
    """
    for path in map(Path, outputs):
        old = _old_folder(path)
        if old.exists() and not path.exists():
            log.warning("%s: restored from %s, left there by an interrupted run", path, old.name)
            os.replace(old, path)
        if not path.parent.is_dir():
            continue
        # tempfile's random part: 8 of [a-z0-9_]
        temporary = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp(\..+)?")
        leftovers = [p for p in path.parent.iterdir() if temporary.fullmatch(p.name)]
        for leftover in [old, *leftovers] if old.exists() else leftovers:
            log.info("removing %s, left by an interrupted run", leftover)
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()


def _readable(path: Path) -> None:
    """Give an output the permissions of a file made the usual way (0644 files and 0755 folders
    under umask 022), not those of a temporary file (0600, 0700), so a server running as another
    user can read it."""
    umask = os.umask(0)
    os.umask(umask)
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in paths:
        if not item.is_symlink():
            item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)


def atomic_dir(path: str | Path) -> contextlib.AbstractContextManager[Path]:
    """`atomic_path` for a folder: an empty temporary folder that replaces `path` whole."""
    return atomic_path(path, folder=True)


def replace_folder(new: str | Path, path: str | Path) -> None:
    """Put the folder `new` in the place of `path`, replacing a previous one whole."""
    new, path = Path(new), Path(path)
    # A folder cannot be renamed over a non-empty one: move the old one aside first. A kill
    # between the two renames leaves it aside, where `clean_stale` finds it.
    old = _old_folder(path)
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        if old.exists() and not path.exists():
            os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _old_folder(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def plain(value):
    """NumPy scalars as plain Python values, so that they serialise to JSON."""
    return value.item() if isinstance(value, np.generic) else value
