"""What every stage script and the `mlpipe` command share: logging to stderr, user errors
reported without a traceback, and a stage's outputs, kept whole when it fails."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

from mlpipe import MlpipeError
from mlpipe.util import files

# The outputs of the stage running in this process, each with its identity when declared.
_outputs: dict[Path, tuple[int, int] | None] = {}


def fail(message: str, code: int = 2) -> NoReturn:
    """Exit with `code`, printing `error: <message>` to stderr."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """A user error (MlpipeError) raised in the block exits 2 with its message."""
    try:
        yield
    except MlpipeError as err:
        fail(str(err))


def outputs(*paths: Path) -> None:
    """Declare the stage's outputs (those of its dvc.yaml entry), before writing any: what a
    killed earlier run left beside them is cleared (`files.clean_stale`), and a failure says
    which of them were replaced. DVC does not delete them before the run (they are `persist`),
    so the previous ones stay until the stage replaces each whole (`files.atomic_path`)."""
    files.clean_stale(*paths)
    _outputs.clear()
    _outputs.update({Path(path): _identity(path) for path in paths})


def _identity(path: Path) -> tuple[int, int] | None:
    # A replacement is a rename: a new inode, or a change of time for one written in place.
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns


def replaced_outputs() -> list[Path]:
    """The declared outputs this run has replaced so far."""
    return [path for path, before in _outputs.items() if _identity(path) != before]


def _say_what_was_kept(prefix: str) -> None:
    replaced = replaced_outputs()
    if not replaced:
        print(f"{prefix}no output of this stage was replaced", file=sys.stderr)
    else:
        kept = [str(path) for path in _outputs if path not in replaced]
        print(
            f"{prefix}replaced {', '.join(map(str, replaced))}; "
            f"kept the previous {', '.join(kept) or 'nothing else'}",
            file=sys.stderr,
        )


def run(main: Callable[[], None]) -> None:
    """Run a stage's main(), logging to stderr; a user error exits 2 with its message, an
    interrupt 130. A failure says which declared outputs (`outputs`) were replaced: normally
    none."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # TensorFlow's own INFO lines ("Assets written to: <temporary folder>") say nothing to a user
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    try:
        with user_errors():
            main()
    except KeyboardInterrupt:
        _say_what_was_kept("interrupted: ")
        sys.exit(130)
    except SystemExit as stop:
        if stop.code not in (0, None):
            _say_what_was_kept("")
        raise
    except BaseException:
        _say_what_was_kept("")
        raise
