"""The `mlpipe` command. Subcommands import only what they need, so checks stay instant."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from mlpipe import MlpipeError, __version__
from mlpipe.config import DEFAULT_PARAMS_FILE, Params, load_params


def _check(args: argparse.Namespace) -> None:
    load_params(args.file)
    print(f"{args.file}: valid")


def _show(args: argparse.Namespace) -> None:
    params = load_params(args.file)
    print(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False), end="")


def _schema(args: argparse.Namespace) -> None:
    print(json.dumps(Params.model_json_schema(), indent=2))


def _sweep(args: argparse.Namespace) -> None:
    from mlpipe import sweep

    sweep.run_sweep(
        Path(args.spec),
        jobs=args.jobs,
        params_file=Path(args.params),
        prefix=args.prefix,
        results_dir=Path(args.results_dir),
        readme=Path(args.readme) if args.readme else None,
        dry_run=args.dry_run,
        show_only=args.show,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlpipe", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mlpipe {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    params = commands.add_parser("params", help="check or show params.yaml").add_subparsers(
        dest="action", required=True
    )
    for name, func, text in (
        ("check", _check, "validate the params file; exit 2 naming each bad key"),
        ("show", _show, "print the params with every default filled in"),
        ("schema", _schema, "print the params schema as JSON Schema"),
    ):
        sub = params.add_parser(name, help=text)
        sub.set_defaults(func=func)
        if name != "schema":
            sub.add_argument("--file", default=DEFAULT_PARAMS_FILE, help="params file")

    sweep = commands.add_parser(
        "sweep",
        help="run a sweep spec as DVC experiments and rank them on validation",
        description="Queue every trial of SPEC (`dvc exp run --queue`), run the queue "
        "(`dvc exp run --run-all -j JOBS`) and print the experiments ranked on the validation "
        "value training monitored; the test metric is shown, never used to rank.",
    )
    sweep.set_defaults(func=_sweep)
    sweep.add_argument("spec", help="sweep spec, e.g. sweeps/learning_rate.yaml")
    sweep.add_argument("-j", "--jobs", type=int, default=1, help="experiments run at a time")
    sweep.add_argument("--prefix", help="experiment names are <prefix>-<n>; default: spec name")
    sweep.add_argument("--params", default=DEFAULT_PARAMS_FILE, help="params file to check")
    sweep.add_argument("--results-dir", default="sweeps/results", help="where <spec>.md goes")
    sweep.add_argument("--readme", help="markdown file whose block for the results to update")
    sweep.add_argument("--dry-run", action="store_true", help="check, print the commands, stop")
    sweep.add_argument("--show", action="store_true", help="rank the experiments already run")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MlpipeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
