"""The README's generated blocks: the results section from metrics/ (`mlpipe readme-results`),
and the blocks that include a results file written by `mlpipe sweep` or bench/bench.py.

Imports neither TensorFlow nor scikit-learn, so it runs in a second.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from mlpipe import MlpipeError
from mlpipe.util import markdown
from mlpipe.util.paths import BASELINES_DETAILS, EVALUATE_DETAILS, TRAIN_METRICS

RESULTS_START = (
    "<!-- results: generated from metrics/ by `make readme-results`; edits here are overwritten -->"
)
RESULTS_END = "<!-- end of results -->"
INCLUDE = re.compile(
    r"(<!-- (?P<what>[a-z]+ results): (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- end of (?P=what) -->)",
    re.DOTALL,
)


class ReadmeError(MlpipeError):
    """The README lacks the markers of the block to write."""


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
    lines = [markdown.table(["metric", *(title for title, _ in columns)], rows)]
    if train:
        lines += [
            "",
            f"Training ran {train['epochs_run']} epochs and kept epoch {train['best_epoch']}, "
            f"the best by {train['monitor']}.",
        ]
    return "\n".join(lines)


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
        raise ReadmeError(
            f"README.md: the results markers are missing; put `{RESULTS_START}` and "
            f"`{RESULTS_END}` on their own lines where the results belong"
        )
    return readme[: start + len(RESULTS_START)] + "\n" + block + "\n" + readme[end:]


def readme_results(metrics_dir: Path) -> str:
    evaluate = json.loads((metrics_dir / Path(EVALUATE_DETAILS).relative_to("metrics")).read_text())
    baselines_file = metrics_dir / Path(BASELINES_DETAILS).relative_to("metrics")
    if baselines_file.exists():
        evaluate["baseline"] = json.loads(baselines_file.read_text())
    train_file = metrics_dir / Path(TRAIN_METRICS).name
    train = json.loads(train_file.read_text()) if train_file.exists() else None
    return results_markdown(evaluate, train)


def uncommitted_params(params_file: Path) -> list[str]:
    """The keys (dotted) whose values in `params_file` differ from its committed version; empty
    when they agree or the file is not in git. The README's results describe the committed
    params, never an experiment's left in the workspace by `dvc exp run`."""
    from mlpipe.tools.presets import committed, read_yaml
    from mlpipe.util.overrides import dotted

    old = committed(params_file)
    if old is None or not params_file.exists():
        return []
    old, new = dotted(old), dotted(read_yaml(params_file))
    return sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))


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
