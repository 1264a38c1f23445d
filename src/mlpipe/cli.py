"""The `mlpipe` command. Subcommands import only what they need, so checks stay instant."""

from __future__ import annotations

import argparse
import json
import sys

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


def _predict(args: argparse.Namespace) -> None:
    import logging

    from mlpipe import predict

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model, meta = predict.load(args.model)
    rows = predict.predict_file(
        model,
        meta,
        args.input,
        args.output,
        batch_size=args.batch_size,
        chunk_rows=args.chunk_rows,
    )
    print(f"{args.output}: {rows} predictions")


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

    predict = commands.add_parser(
        "predict", help="run an exported model on a CSV or Parquet file of new rows"
    )
    predict.set_defaults(func=_predict)
    predict.add_argument("--model", required=True, help="export folder or .keras file")
    predict.add_argument("--input", required=True, help="CSV or Parquet file of rows")
    predict.add_argument("--output", required=True, help="CSV file to write")
    predict.add_argument("--batch-size", type=int, default=8192, help="rows per model call")
    predict.add_argument(
        "--chunk-rows", type=int, default=100_000, help="rows read at a time (bounds memory)"
    )
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
