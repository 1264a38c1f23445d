"""`mlpipe report`: what a change did against a git ref, in Markdown for a pull request: the
params and metrics that changed and the plots that differ.

DVC reads the params and metrics of the other ref from git, so no DVC remote is needed; the
details file (every score, which is not a DVC metric) is read from git the same way. Imports
neither TensorFlow nor scikit-learn, so it runs in a second.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mlpipe import MlpipeError
from mlpipe.util import git, markdown
from mlpipe.util.overrides import dotted
from mlpipe.util.paths import BASELINES_DETAILS, EVALUATE_DETAILS, EVALUATE_METRICS, PLOTS_DIR


class ReportError(MlpipeError):
    """A report cannot be made: unknown git ref, or DVC failed."""


def _dvc_json(args: list[str], cwd: Path) -> dict:
    command = [sys.executable, "-m", "dvc", *args, "--json"]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ReportError(f"`{' '.join(command)}` failed:\n{result.stderr.strip()}")
    return json.loads(result.stdout or "{}")


def collect(base: str, repo: Path) -> tuple[dict, dict, list[tuple[str, str]]]:
    """(params diff, metrics diff, [(plot file, how it changed)]) of the working tree and base."""
    if not git.is_commit(base, repo):
        raise ReportError(
            f"git ref `{base}` not found; fetch it first (`git fetch origin main`, or in CI "
            "check out with fetch-depth: 0) or pass another one: make report BASE=<ref>"
        )
    params = _dvc_json(["params", "diff", base], repo)
    metrics = _dvc_json(["metrics", "diff", base], repo)
    for path in (EVALUATE_DETAILS, BASELINES_DETAILS):
        details = details_diff(path, git.committed_text(repo / path, base), repo)
        if details:
            metrics[path] = details
    # The working tree against base, and files not yet added to git
    diff = git.run("diff", "--name-status", "--no-renames", base, "--", PLOTS_DIR, cwd=repo)
    status = {"A": "added", "D": "removed"}
    plots = {path: status.get(code[0], "changed") for code, path in _pairs(diff.split())}
    new = git.run("ls-files", "--others", "--exclude-standard", "--", PLOTS_DIR, cwd=repo)
    plots |= dict.fromkeys(new.split(), "added")
    return params, metrics, sorted(plots.items())


def details_diff(path: str, base_text: str | None, repo: Path) -> dict:
    """{dotted name: {"old", "new"}} of the changed values of a details file (in git, not a DVC
    metric), laid out as `dvc metrics diff --json` lays out one file."""
    old = dotted(json.loads(base_text)) if base_text else {}
    new = dotted(json.loads((repo / path).read_text())) if (repo / path).exists() else {}
    changed = {}
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name), new.get(name)
        if before != after:
            changed[name] = {"old": before, "new": after}
    return changed


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


def format_report(base: str, params: dict, metrics: dict, plots: list[tuple[str, str]]) -> str:
    """The report as Markdown, from `dvc params diff --json` and `dvc metrics diff --json`."""
    old, new = f"`{base}`", "this change"
    lines = [f"## What this change did, against `{base}`", "", "### Params", ""]
    rows = [
        [f"`{name}`", _number(d.get("old")), _number(d.get("new"))]
        for path in sorted(params)
        for name, d in sorted(params[path].items())
    ]
    lines.append(markdown.table(["param", old, new], rows) if rows else "No param changed.")

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
            elif path == EVALUATE_DETAILS and name in metrics.get(EVALUATE_METRICS, {}):
                continue  # already in the headline table
            else:
                other.append([f"`{path}`", name, *cells])
    lines += ["", f"### Test metrics (`{EVALUATE_METRICS}`)", ""]
    header = [old, new, "change"]
    lines.append(
        markdown.table(["metric", *header], headline) if headline else "No test metric changed."
    )
    if other:
        lines += [
            "",
            f"<details><summary>{len(other)} other changed metrics: validation split, "
            "baselines, per class, training</summary>",
            "",
            markdown.table(["file", "metric", *header], other),
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
