"""The `mlpipe` command. Subcommands import only what they need, so checks stay instant."""

from __future__ import annotations

import argparse
import codecs
import json
import sys
from pathlib import Path

import yaml

from mlpipe import __version__
from mlpipe.params import DEFAULT_PARAMS_FILE, Params, load_params
from mlpipe.util.stage import fail, user_errors


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
    import sys

    from mlpipe.serving import predict

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.encoding:  # the file's encoding, where it differs from the training data's
        try:
            codecs.lookup(args.encoding)
        except LookupError:
            fail(f"--encoding: unknown text encoding {args.encoding!r}; e.g. utf-8, cp1252")
    rows = predict.run(
        args.model,
        args.input,
        args.output,
        batch_size=args.batch_size,
        chunk_rows=args.chunk_rows,
        progress=sys.stderr.isatty(),
        encoding=args.encoding,
    )
    print(f"{args.output}: {rows} predictions")


def _serve(args: argparse.Namespace) -> None:
    import logging

    from mlpipe.serving import serve

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    serve.serve(
        args.model,
        host=args.host,
        port=args.port,
        name=args.name,
        max_request_bytes=args.max_request_bytes,
    )


def _preset_args(args: argparse.Namespace) -> None:
    import shlex

    from mlpipe.tools import presets

    print(shlex.join(presets.preset_args(args.preset, args.file)))


def _report(args: argparse.Namespace) -> None:
    from mlpipe.tools import report

    report.write_report(args.base, args.out)
    print(f"{args.out}: params, metrics and plots changed against {args.base}")


def _readme_results(args: argparse.Namespace) -> None:
    from mlpipe.tools import readme

    changed = [] if args.check else readme.uncommitted_params(args.params)
    if changed:
        shown = ", ".join(f"`{key}`" for key in changed[:5]) + (", ..." if len(changed) > 5 else "")
        print(
            f"{args.readme}: results left as they are: {args.params} differs from the committed "
            f"one ({shown}), and the README's results describe the committed params. Commit "
            f"{args.params} to make this run the default, or `git checkout {args.params}` and "
            "`dvc checkout` to go back to it; then run `make readme-results`.",
            file=sys.stderr,
        )
        return
    if readme.update_readme(args.readme, args.metrics, check=args.check):
        print(f"{args.readme}: results {'match' if args.check else 'written from'} {args.metrics}/")
        return
    fail(
        f"{args.readme}: the results section does not match {args.metrics}/; "
        "run `make readme-results`",
        code=1,
    )


def _sweep(args: argparse.Namespace) -> None:
    from mlpipe.tools import sweep

    sweep.run_sweep(
        Path(args.spec),
        jobs=args.jobs,
        params_file=Path(args.params),
        prefix=args.prefix,
        results_dir=Path(args.results_dir),
        readme=Path(args.readme) if args.readme else None,
        dry_run=args.dry_run,
        show_only=args.show,
        shard=sweep.parse_shard(args.shard),
        push=args.push,
        remote=args.remote,
        until=None if args.until == "all" else args.until,
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

    predict = commands.add_parser(
        "predict", help="run an exported model on a CSV or Parquet file of new rows"
    )
    predict.set_defaults(func=_predict)
    predict.add_argument("--model", required=True, help="export folder or .keras file")
    predict.add_argument("--input", required=True, help="CSV or Parquet file of rows")
    predict.add_argument("--output", required=True, help="CSV file to write")
    predict.add_argument(
        "--batch-size", type=int, default=65_536, help="rows per model call (default 65536)"
    )
    predict.add_argument(
        "--encoding",
        help="text encoding of a CSV input (default: the training data's data.csv.encoding)",
    )
    predict.add_argument(
        "--chunk-rows", type=int, default=100_000, help="rows read at a time (bounds memory)"
    )

    serve = commands.add_parser(
        "serve",
        help="serve an exported model over HTTP (TF Serving REST and MLflow scoring routes)",
        description="Load the model once and answer POST /v1/models/NAME:predict "
        '({"instances": [...]} or {"inputs": {...}}), POST /invocations (dataframe_records, '
        "dataframe_split), GET /v1/models/NAME, /v1/models/NAME/metadata, /ping, /health and "
        "/version. SIGTERM or SIGINT stops it once the requests in flight are answered.",
    )
    serve.set_defaults(func=_serve)
    serve.add_argument("--model", required=True, help="export folder (models/export)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8501, help="port (default 8501, TF Serving's)")
    serve.add_argument("--name", default="model", help="model name in the TF Serving routes")
    serve.add_argument(
        "--max-request-bytes",
        type=int,
        default=16 * 1024 * 1024,
        help="larger request bodies are refused with 413 (default 16 MiB)",
    )
    sub = commands.add_parser(
        "preset-args",
        help="print the `dvc exp run -S` arguments that apply a preset (examples/<name>.yaml)",
    )
    sub.add_argument("preset", type=Path, help="YAML file of the params that differ")
    sub.add_argument("--file", default=DEFAULT_PARAMS_FILE, help="params file it applies to")
    sub.set_defaults(func=_preset_args)

    sub = commands.add_parser(
        "report", help="write a Markdown report of what the working tree changed against a ref"
    )
    sub.add_argument("--base", default="main", help="git ref to compare with (default: main)")
    sub.add_argument("--out", type=Path, default=Path("report.md"), help="Markdown file")
    sub.set_defaults(func=_report)

    sub = commands.add_parser(
        "readme-results", help="rewrite the README's results section from the metrics files"
    )
    sub.add_argument("--readme", type=Path, default=Path("README.md"))
    sub.add_argument("--metrics", type=Path, default=Path("metrics"), help="metrics folder")
    sub.add_argument(
        "--params",
        type=Path,
        default=Path("params.yaml"),
        help="left as they are when this differs from its committed version",
    )
    sub.add_argument("--check", action="store_true", help="exit 1 if the section is stale")
    sub.set_defaults(func=_readme_results)
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
    sweep.add_argument(
        "--shard", default="1/1", help="I/N: run only every N-th trial from the I-th (default 1/1)"
    )
    sweep.add_argument(
        "--push",
        nargs="?",
        const="origin",
        metavar="GIT_REMOTE",
        help="push each finished experiment to GIT_REMOTE (default origin) and its outputs to "
        "the DVC remote (dvc exp push)",
    )
    sweep.add_argument(
        "--remote", metavar="GIT_REMOTE", help="with --show: fetch the experiments from here first"
    )
    sweep.add_argument(
        "--until",
        default="evaluate",
        metavar="STAGE",
        help="run each experiment up to this stage (default evaluate: what the ranking and its "
        "table need); `all` runs every stage",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with user_errors():
        args.func(args)


if __name__ == "__main__":
    main()
