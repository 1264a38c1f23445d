"""Sharing results through a DVC remote on a real S3 server (SeaweedFS on loopback): one clone
runs the pipeline and pushes, a fresh clone pulls and finds nothing to rerun."""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from s3_server import S3Server, start, stop
from test_pipeline import TINY, run, stages_run

from conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REMOTE = "team"


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[S3Server]:
    process, server = start(tmp_path_factory.mktemp("s3"))
    yield server
    stop(process)


def set_remote(repo: Path, server: S3Server, secret: str | None = None) -> None:
    """The team's one-time set-up: the remote in .dvc/config (in git), the keys in the
    untracked .dvc/config.local."""
    url = f"s3://{server.bucket}/dvc-cache"
    run(["dvc", "remote", "add", "-f", "-d", REMOTE, url], cwd=repo)
    run(["dvc", "remote", "modify", REMOTE, "endpointurl", server.endpoint], cwd=repo)
    local = ["dvc", "remote", "modify", "--local", REMOTE]
    run([*local, "access_key_id", server.access_key], cwd=repo)
    run([*local, "secret_access_key", secret or server.secret_key], cwd=repo)


def cache_digest(repo: Path) -> dict[str, str]:
    cache = repo / ".dvc" / "cache"
    return {
        str(p.relative_to(cache)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(cache.rglob("*"))
        if p.is_file()
    }


def with_aws_keys(key: str, secret: str) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}


@pytest.fixture(scope="module")
def origin(tmp_path_factory, s3) -> Path:
    """A bare git remote holding a commit whose outputs one clone ran and pushed to S3."""
    work = tmp_path_factory.mktemp("team")
    bare = work / "origin.git"
    run(["git", "init", "-q", "--bare", str(bare)], cwd=work)
    first = work / "first"
    run(["git", "clone", "-q", str(ROOT), str(first)], cwd=work)
    params = yaml.safe_load((first / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section] = {**params[section], **values}
    (first / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    set_remote(first, s3)
    assert stages_run(run(["dvc", "repro"], cwd=first))
    run(["git", "add", "-A"], cwd=first)
    run(["git", "commit", "-qm", "tiny run, remote configured"], cwd=first)
    pushed = run(["dvc", "push"], cwd=first)
    assert "pushed" in pushed.stdout
    run(["git", "push", "-q", str(bare), "HEAD:main"], cwd=first)
    return bare


def fresh_clone(origin: Path, path: Path) -> Path:
    run(["git", "clone", "-q", "-b", "main", str(origin), str(path)], cwd=path.parent)
    return path


def test_a_fresh_clone_pulls_every_output_and_reruns_nothing(origin, s3, tmp_path):
    clone = fresh_clone(origin, tmp_path / "teammate")
    assert not (clone / "models" / "model").exists()
    # Keys from the usual AWS variables this time, not from .dvc/config.local
    env = with_aws_keys(s3.access_key, s3.secret_key)
    run(["dvc", "pull"], cwd=clone, env=env)
    assert run(["dvc", "status"], cwd=clone).stdout.strip().endswith("up to date.")
    assert stages_run(run(["dvc", "repro"], cwd=clone)) == set()
    first = origin.parent / "first"
    for output in ("models/export/model.keras", "data/prepared/train.parquet"):
        assert (clone / output).read_bytes() == (first / output).read_bytes(), output


def test_a_wrong_secret_fails_clearly_and_keeps_the_cache(origin, s3, tmp_path):
    first = origin.parent / "first"
    before = cache_digest(first)
    set_remote(first, s3, secret="not-the-secret")
    try:
        # `make push`, with this test's virtualenv (-o: do not rebuild it)
        venv = Path(sys.executable).parents[1]
        make = ["make", "-s", "push", f"VENV={venv}", "-o", f"{venv}/.installed"]
        result = run(make, cwd=first, check=False)
    finally:
        set_remote(first, s3)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "403" in message
    assert "access_key_id" in message and "AWS_SECRET_ACCESS_KEY" in message  # what to do
    assert cache_digest(first) == before
    # and a teammate with a wrong key gets the same answer from pull, with nothing written
    clone = fresh_clone(origin, tmp_path / "wrong")
    env = with_aws_keys(s3.access_key, "not-the-secret")
    pulled = run(["dvc", "pull"], cwd=clone, env=env, check=False)
    assert pulled.returncode != 0 and "403" in pulled.stdout + pulled.stderr
    assert not (clone / "models" / "model").exists()


def test_a_file_over_64_mb_round_trips_in_parts(origin, s3, tmp_path):
    clone = fresh_clone(origin, tmp_path / "big")
    env = with_aws_keys(s3.access_key, s3.secret_key)
    big = clone / "big.bin"
    big.write_bytes(np.random.default_rng(0).bytes(70 * 2**20))
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    run(["dvc", "add", "big.bin"], cwd=clone)
    run(["dvc", "push", "big.bin.dvc"], cwd=clone, env=env)
    big.unlink()
    for path in (clone / ".dvc" / "cache").rglob("*"):
        if path.is_file():
            path.unlink()
    run(["dvc", "pull", "big.bin.dvc"], cwd=clone, env=env)
    assert hashlib.sha256(big.read_bytes()).hexdigest() == digest


RATES = """
description: four rates, run as two shards on two machines and ranked on a third
grid:
  train.optimizer.learning_rate: [0.0005, 0.001, 0.002, 0.004]
"""


def test_a_sweep_split_over_two_machines_is_ranked_whole_on_a_third(origin, s3, tmp_path):
    spec = tmp_path / "rates.yaml"
    spec.write_text(RATES)
    env = with_aws_keys(s3.access_key, s3.secret_key)
    for index, expected in ((1, ["rates-1", "rates-3"]), (2, ["rates-2", "rates-4"])):
        machine = fresh_clone(origin, tmp_path / f"machine-{index}")
        run(["dvc", "pull"], cwd=machine, env=env)  # what main already has: only train onward run
        sweep = ["mlpipe", "sweep", str(spec), "--shard", f"{index}/2", "--push"]
        shown = run(sweep, cwd=machine, env=env).stdout
        assert sorted(RANKED.findall(shown)) == expected  # its own two trials, ranked
    third = fresh_clone(origin, tmp_path / "third")
    show = ["mlpipe", "sweep", str(spec), "--show", "--remote", "origin"]
    board = run(show, cwd=third, env=env).stdout
    assert sorted(RANKED.findall(board)) == ["rates-1", "rates-2", "rates-3", "rates-4"]
    best = re.search(r"Best: `(rates-\d)`", board).group(1)
    assert best == RANKED.findall(board)[0]
    run(["dvc", "exp", "pull", "origin", best], cwd=third, env=env)  # with its outputs
    run(["dvc", "exp", "apply", best], cwd=third)
    # nothing retrained: the sweep stopped at evaluate, so only the chosen one's export runs
    assert stages_run(run(["dvc", "repro"], cwd=third)) == {"export"}
    rate = yaml.safe_load((third / "params.yaml").read_text())["train"]["optimizer"]
    assert str(rate["learning_rate"]) in board.split(best)[1].splitlines()[0]


RANKED = re.compile(r"^\| \d+ \| (rates-\d) \|", flags=re.M)
