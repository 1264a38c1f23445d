"""File writes that never leave a half-written output behind, and small file helpers."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str = ".tmp", folder: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write, an empty file (or folder, with `folder`),
    that replaces `path` whole if the block succeeds and is removed if it fails: a reader never
    sees half an output, and a failure leaves the previous one in place.

    The temporary name ends with `suffix`, for writers that take the format from the name
    (Keras: `.keras`, `.weights.h5`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}."
    if folder:
        tmp = Path(tempfile.mkdtemp(suffix, prefix, path.parent))
    else:
        fd, name = tempfile.mkstemp(suffix, prefix, path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        _readable(tmp)
        if folder:
            _replace_folder(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        if folder:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


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


def _replace_folder(tmp: Path, path: Path) -> None:
    # A folder cannot be renamed over a non-empty one: move the old one aside first.
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def plain(value):
    """NumPy scalars as plain Python values, so that they serialise to JSON."""
    return value.item() if isinstance(value, np.generic) else value
