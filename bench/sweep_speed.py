"""Wall time of a sweep run up to evaluate (what the ranking needs) against one that runs every
stage of every trial, export included, on the same spec and code.

Each way runs in its own temporary clone, whose first `dvc repro` (not timed) brings every
stage up to date as a user's checkout is; the two ways alternate for `--pairs` pairs, and each
pair's ratio is reported with their median. Usage:

    python bench/sweep_speed.py                          # sweeps/learning_rate.yaml, 1 pair
    python bench/sweep_speed.py --spec sweeps/batch_size.yaml --pairs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(command: list[str], repo: Path) -> float:
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(repo / "src"),
    }
    start = time.perf_counter()
    subprocess.run(command, cwd=repo, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="sweeps/learning_rate.yaml")
    parser.add_argument("--pairs", type=int, default=1)
    args = parser.parse_args()
    ways = {"until evaluate": ["--until", "evaluate"], "every stage": ["--until", "all"]}
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    with tempfile.TemporaryDirectory() as tmp:
        repos = {}
        for i, way in enumerate(ways):
            repos[way] = Path(tmp) / f"repo{i}"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(repos[way])], check=True)
            run(["dvc", "repro"], repos[way])
        for pair in range(args.pairs):
            order = list(ways) if pair % 2 == 0 else list(ways)[::-1]
            for way in order:
                prefix = f"bench{pair}-{way.split()[0]}"
                sweep = ["mlpipe", "sweep", args.spec, "--prefix", prefix, *ways[way]]
                seconds[way].append(run([*sweep, "--results-dir", tmp], repos[way]))
                print(f"pair {pair + 1}: {way} {seconds[way][-1]:.1f} s", flush=True)
    ratios = [e / u for u, e in zip(*seconds.values(), strict=True)]
    for way, values in seconds.items():
        print(f"{way}: median {statistics.median(values):.1f} s ({values})")
    print(
        f"every stage / until evaluate: median {statistics.median(ratios):.2f} "
        f"(range {min(ratios):.2f}-{max(ratios):.2f}), {args.spec}"
    )


if __name__ == "__main__":
    main()
