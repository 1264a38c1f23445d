"""The README's generated blocks: the results section and the included results files."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import ROOT
from mlpipe.tools import cli, readme


def test_results_table_has_the_model_and_its_baselines():
    evaluate = {
        "accuracy": 0.98,
        "log_loss": 0.051234,
        "per_class": {"0": {"f1": 1.0}},
        "valid": {"accuracy": 0.99, "log_loss": 0.04},
        "baseline": {"majority": {"accuracy": 0.1, "log_loss": 2.3, "valid": {"accuracy": 0.1}}},
    }
    train = {"epochs_run": 12, "best_epoch": 9, "monitor": "val_loss"}
    assert readme.results_markdown(evaluate, train).splitlines() == [
        "| metric | MLP, test | MLP, validation | majority, test |",
        "|---|---|---|---|",
        "| accuracy | 0.9800 | 0.9900 | 0.1000 |",
        "| log_loss | 0.0512 | 0.0400 | 2.3000 |",
        "",
        "Training ran 12 epochs and kept epoch 9, the best by val_loss.",
    ]


def test_results_need_both_markers():
    with pytest.raises(readme.ReadmeError, match="results markers are missing"):
        readme.replace_results("# readme\n", "table")
    text = f"a\n{readme.RESULTS_START}\nold\n{readme.RESULTS_END}\nb\n"
    assert readme.replace_results(text, "new") == text.replace("old", "new")


def test_readme_results_match_the_metrics_in_git():
    text = (ROOT / "README.md").read_text()
    expected = readme.replace_results(text, readme.readme_results(ROOT / "metrics"))
    assert text == expected, "README.md's results are stale: run `make readme-results`"


def test_a_stale_results_section_exits_1_and_says_what_to_run(tmp_path, capsys):
    stale = tmp_path / "README.md"
    stale.write_text(f"{readme.RESULTS_START}\nold\n{readme.RESULTS_END}\n")
    args = ["readme-results", "--readme", str(stale), "--metrics", str(ROOT / "metrics")]
    args += ["--params", str(tmp_path / "params.yaml")]  # not in git: nothing to compare with
    with pytest.raises(SystemExit) as info:
        cli.main([*args, "--check"])
    assert info.value.code == 1
    assert capsys.readouterr().err == (
        f"error: {stale}: the results section does not match {ROOT / 'metrics'}/; "
        "run `make readme-results`\n"
    )
    cli.main(args)
    assert "| metric | MLP, test |" in stale.read_text()
    cli.main([*args, "--check"])


def test_an_include_block_is_replaced_only_for_its_results_file():
    text = (
        "intro\n<!-- sweep results: sweeps/results/a.md -->\nold a\n<!-- end of sweep results -->\n"
        "<!-- sweep results: sweeps/results/b.md -->\nold b\n<!-- end of sweep results -->\n"
    )
    updated = readme.fill_include(text, "sweeps/results/a.md", "new a\n")
    assert "new a\n<!-- end" in updated and "old a" not in updated and "old b" in updated
    assert readme.fill_include(text, "sweeps/results/c.md", "x") == text
    bench = "<!-- bench results: bench/results.md -->\nold\n<!-- end of bench results -->\n"
    assert readme.fill_include(text + bench, "bench/results.md", "new\n").endswith(
        "<!-- bench results: bench/results.md -->\nnew\n<!-- end of bench results -->\n"
    )


def test_results_are_left_alone_while_params_differ_from_the_committed_ones(tmp_path, capsys):
    # `make example` leaves an experiment's params in the workspace; `make repro` then must not
    # write that experiment's numbers into the README as the default's
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    params = tmp_path / "params.yaml"
    params.write_text("seed: 1\ntrain:\n  epochs: 5\n  batch_size: 32\n")
    subprocess.run([*git, "add", "params.yaml"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "params"], cwd=tmp_path, check=True)
    stale = tmp_path / "README.md"
    stale.write_text(f"{readme.RESULTS_START}\nold\n{readme.RESULTS_END}\n")
    args = ["readme-results", "--readme", str(stale), "--metrics", str(ROOT / "metrics")]
    args += ["--params", str(params)]

    params.write_text("seed: 1\ntrain:\n  epochs: 50\n  batch_size: 32\n  dropout: 0.1\n")
    cli.main(args)
    assert "\nold\n" in stale.read_text()
    err = capsys.readouterr().err
    assert "results left as they are" in err and "(`train.dropout`, `train.epochs`)" in err

    params.write_text("seed: 1\ntrain: {batch_size: 32, epochs: 5}\n")  # same values
    cli.main(args)
    assert "| metric | MLP, test |" in stale.read_text()
