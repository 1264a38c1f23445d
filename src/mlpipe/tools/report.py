"""Markdown from the results kept in git: what a change did against a git ref (`mlpipe report`),
and the README's results section (`mlpipe readme-results`).

DVC reads the params and metrics of the other ref from git, so no DVC remote is needed. Imports
neither TensorFlow nor scikit-learn, so it runs in a second.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from mlpipe import MlpipeError

EVALUATE_METRICS = "metrics/evaluate.json"
TRAIN_METRICS = "metrics/train.json"
PLOTS_DIR = "plots"
RESULTS_START = (
    "<!-- results: generated from metrics/ by `make readme-results`; edits here are overwritten -->"
)
RESULTS_END = "<!-- end of results -->"


class ReportError(MlpipeError):
    """A report cannot be made: unknown git ref, DVC failed, or README markers are missing."""


# What a change did


def _run(args: list[str], cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ReportError(f"`{' '.join(args)}` failed:\n{result.stderr.strip()}")
    return result.stdout


def _dvc_json(args: list[str], cwd: Path) -> dict:
    return json.loads(_run([sys.executable, "-m", "dvc", *args, "--json"], cwd) or "{}")


def collect(base: str, repo: Path) -> tuple[dict, dict, list[tuple[str, str]]]:
    """(params diff, metrics diff, [(plot file, how it changed)]) of the working tree and base."""
    verify = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}"],
        cwd=repo,
        capture_output=True,
    )
    if verify.returncode != 0:
        raise ReportError(
            f"git ref `{base}` not found; fetch it first (`git fetch origin main`, or in CI "
            "check out with fetch-depth: 0) or pass another one: make report BASE=<ref>"
        )
    params = _dvc_json(["params", "diff", base], repo)
    metrics = _dvc_json(["metrics", "diff", base], repo)
    # The working tree against base, and files not yet added to git
    diff = _run(["git", "diff", "--name-status", "--no-renames", base, "--", PLOTS_DIR], repo)
    status = {"A": "added", "D": "removed"}
    plots = {path: status.get(code[0], "changed") for code, path in _pairs(diff.split())}
    new = _run(["git", "ls-files", "--others", "--exclude-standard", "--", PLOTS_DIR], repo)
    plots |= dict.fromkeys(new.split(), "added")
    return params, metrics, sorted(plots.items())


def _pairs(words: list[str]) -> list[tuple[str, str]]:
    return list(zip(words[::2], words[1::2], strict=True))


def _number(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, ".6g")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value)  # booleans, strings and lists as they read in YAML


def _delta(old, new) -> str:
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (old, new))
    if not numbers:
        return "added" if old is None else "removed" if new is None else ""
    return format(new - old, "+.6g")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def format_report(base: str, params: dict, metrics: dict, plots: list[tuple[str, str]]) -> str:
    """The report as Markdown, from `dvc params diff --json` and `dvc metrics diff --json`."""
    old, new = f"`{base}`", "this change"
    lines = [f"## What this change did, against `{base}`", "", "### Params", ""]
    rows = [
        [f"`{name}`", _number(d.get("old")), _number(d.get("new"))]
        for path in sorted(params)
        for name, d in sorted(params[path].items())
    ]
    lines.append(_table(["param", old, new], rows) if rows else "No param changed.")

    headline, other = [], []
    for path in sorted(metrics):
        for name, d in sorted(metrics[path].items()):
            cells = [
                _number(d.get("old")),
                _number(d.get("new")),
                _delta(d.get("old"), d.get("new")),
            ]
            if path == EVALUATE_METRICS and "." not in name:
                headline.append([name, *cells])
            else:
                other.append([f"`{path}`", name, *cells])
    lines += ["", f"### Test metrics (`{EVALUATE_METRICS}`)", ""]
    header = [old, new, "change"]
    lines.append(_table(["metric", *header], headline) if headline else "No test metric changed.")
    if other:
        lines += [
            "",
            f"<details><summary>{len(other)} other changed metrics: validation split, "
            "baselines, per class, training</summary>",
            "",
            _table(["file", "metric", *header], other),
            "",
            "</details>",
        ]

    lines += ["", "### Plots", ""]
    if plots:
        images = [(p, how) for p, how in plots if p.endswith(".png")]
        data = [(p, how) for p, how in plots if not p.endswith(".png")]
        lines += [f"- [`{p}`]({p}) ({how})" for p, how in images]
        if data:
            files = ", ".join(f"`{p}` ({how})" for p, how in data)
            lines.append(f"- {len(data)} plot data files: {files}")
        lines += ["", f"`dvc plots diff {base}` draws the old and new curves together."]
    else:
        lines.append("No plot changed.")
    return "\n".join(lines) + "\n"


def write_report(base: str, out: Path, repo: Path = Path()) -> None:
    from mlpipe.util import files

    files.write_text(out, format_report(base, *collect(base, repo)))


# The README's results section


def _scalars(scores: dict) -> dict:
    return {k: v for k, v in scores.items() if not isinstance(v, dict)}


def _cell(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def results_markdown(evaluate: dict, train: dict | None = None) -> str:
    """The results table: the MLP on the test and validation splits, and the baselines."""
    test = _scalars(evaluate)
    columns = [("MLP, test", test)]
    if "valid" in evaluate:
        columns.append(("MLP, validation", _scalars(evaluate["valid"])))
    for name, scores in sorted(evaluate.get("baseline", {}).items()):
        columns.append((f"{name.replace('_', ' ')}, test", _scalars(scores)))
    rows = [[name, *(_cell(values.get(name)) for _, values in columns)] for name in test]
    lines = [_table(["metric", *(title for title, _ in columns)], rows)]
    if train:
        lines += [
            "",
            f"Training ran {train['epochs_run']} epochs and kept epoch {train['best_epoch']}, "
            f"the best by {train['monitor']}.",
        ]
    return "\n".join(lines)


INCLUDE = re.compile(
    r"(<!-- (?P<what>[a-z]+ results): (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- end of (?P=what) -->)",
    re.DOTALL,
)


def fill_include(text: str, path: str, content: str) -> str:
    """Replace the body of each block `<!-- <what> results: <path> -->` ... `<!-- end of <what>
    results -->` (what: sweep, bench) with `content`, the file at `path`; text without such a
    block comes back unchanged."""

    def fill(match: re.Match) -> str:
        if match["path"] != path:
            return match[0]
        return match[1] + content + match[5]

    return INCLUDE.sub(fill, text)


def replace_results(readme: str, block: str) -> str:
    """`readme` with the text between the results markers replaced by `block`."""
    start, end = readme.find(RESULTS_START), readme.find(RESULTS_END)
    if start < 0 or end < start:
        raise ReportError(
            f"README.md: the results markers are missing; put `{RESULTS_START}` and "
            f"`{RESULTS_END}` on their own lines where the results belong"
        )
    return readme[: start + len(RESULTS_START)] + "\n" + block + "\n" + readme[end:]


def readme_results(metrics_dir: Path) -> str:
    evaluate = json.loads((metrics_dir / Path(EVALUATE_METRICS).name).read_text())
    train_file = metrics_dir / Path(TRAIN_METRICS).name
    train = json.loads(train_file.read_text()) if train_file.exists() else None
    return results_markdown(evaluate, train)


def update_readme(readme: Path, metrics_dir: Path, check: bool = False) -> bool:
    """Rewrite the results section; with `check`, only say whether it is up to date."""
    from mlpipe.util import files

    text = readme.read_text()
    updated = replace_results(text, readme_results(metrics_dir))
    if check:
        return updated == text
    if updated != text:
        files.write_text(readme, updated)
    return True
