"""What every stage script shares: logging to stderr and user errors without tracebacks."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from mlpipe import MlpipeError


def run(main: Callable[[], None]) -> None:
    """Run a stage's main(); a user error exits 2 with its message instead of a traceback."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        main()
    except MlpipeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: no output of this stage was replaced", file=sys.stderr)
        sys.exit(130)
