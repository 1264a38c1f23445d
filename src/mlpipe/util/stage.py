"""What every stage script and the `mlpipe` command share: logging to stderr, and user errors
reported without a traceback."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import NoReturn

from mlpipe import MlpipeError


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


def run(main: Callable[[], None]) -> None:
    """Run a stage's main(), logging to stderr; a user error exits 2 with its message, an
    interrupt 130."""
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
        print("interrupted: no output of this stage was replaced", file=sys.stderr)
        sys.exit(130)
