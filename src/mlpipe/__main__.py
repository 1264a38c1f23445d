"""`python -m mlpipe`: the `mlpipe` command."""

from mlpipe.tools.cli import main

if __name__ == "__main__":
    main()
