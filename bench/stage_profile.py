"""Where each stage's time goes: its wall and CPU seconds, and how much of that is imports.

For each git revision given (default: HEAD), a temporary clone runs `dvc repro` once, so every
input exists; then each stage's command from that revision's dvc.yaml runs directly (no DVC
around it), in pipeline order, `--repeats` times, the revisions alternating so that a busy
machine slows them alike. Each runs under `python -X importtime`, whose report gives the
seconds the stage spent importing modules (TensorFlow, scikit-learn, ..., wherever in the
stage the import happens); `work` is the rest: reading inputs, the stage's own work, writing
outputs. Figures are medians over the repeats. Also: `dvc repro --force` of the pipeline.

    python bench/stage_profile.py --rev 7459a8f --rev HEAD --out bench/stage_profile.md
                                        # before and after; also fills the README's table
    python bench/stage_profile.py --repeats 1                   # one quick pass over HEAD
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("prepare", "baselines", "build", "lr_find", "train", "evaluate", "export")


def clone(rev: str, into: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(ROOT), str(into)], check=True)
    subprocess.run(["git", "checkout", "-q", rev], cwd=into, check=True)
    return into


def environment(repo: Path) -> dict:
    venv_bin = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(repo / "src"),
    }


def timed(command: str | list[str], repo: Path) -> tuple[float, float, str]:
    """Wall and CPU (user + system, of the children) seconds of one command, and its stderr."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        command,
        cwd=repo,
        env=environment(repo),
        shell=isinstance(command, str),
        check=True,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, done.stderr


def import_seconds(importtime_report: str) -> float:
    """Seconds spent importing, from `python -X importtime`'s report: the cumulative times of
    the imports made directly by running code (the report's least indented lines)."""
    total = 0
    for line in importtime_report.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        _, cumulative, name = line.split("|")
        if name.startswith(" ") and not name.startswith("  "):
            total += int(cumulative)
    return total / 1e6


def stages(repo: Path) -> dict[str, str]:
    """Each stage's command, run under `python -X importtime`, in pipeline order."""
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    found = {}
    for name in ORDER:
        if name not in spec:
            continue
        command = " ".join(spec[name]["cmd"].split())
        found[name] = command.replace("python ", "python -X importtime ", 1)
    return found


def profile(revs: list[str], repeats: int) -> dict:
    samples: dict[str, dict[str, dict[str, list[float]]]] = {rev: {} for rev in revs}
    e2e: dict[str, list[float]] = {rev: [] for rev in revs}
    with tempfile.TemporaryDirectory() as tmp:
        repos = {rev: clone(rev, Path(tmp) / f"repo{i}") for i, rev in enumerate(revs)}
        for rev, repo in repos.items():
            timed(["dvc", "repro"], repo)  # every input in place; not timed
            print(f"{rev}: pipeline ready", flush=True)
        for round_ in range(repeats):
            for rev, repo in repos.items():
                for name, command in stages(repo).items():
                    into = samples[rev].setdefault(name, {"wall": [], "cpu": [], "imports": []})
                    wall, cpu, report = timed(command, repo)
                    into["wall"].append(wall)
                    into["cpu"].append(cpu)
                    into["imports"].append(import_seconds(report))
                e2e[rev].append(timed(["dvc", "repro", "--force"], repo)[0])
                print(f"{rev}: round {round_ + 1} of {repeats} done", flush=True)
    return {"stages": samples, "e2e": e2e}


def markdown(result: dict, revs: list[str]) -> str:
    sys.path.insert(0, str(ROOT / "src"))
    from mlpipe.util.markdown import table

    median = statistics.median
    header = ["stage"]
    for rev in revs:
        header += [f"{rev}: wall s", "CPU s", "imports s", "work s"]
    names = [n for n in ORDER if any(n in result["stages"][rev] for rev in revs)]
    rows = []
    for name in names:
        row = [name]
        for rev in revs:
            s = result["stages"][rev].get(name)
            if s is None:
                row += ["-"] * 4
                continue
            wall, cpu, imports = median(s["wall"]), median(s["cpu"]), median(s["imports"])
            row += [f"{wall:.1f}", f"{cpu:.1f}", f"{imports:.1f}", f"{max(wall - imports, 0):.1f}"]
        rows.append(row)
    total = ["sum of stages"]
    for rev in revs:
        walls = [median(s["wall"]) for s in result["stages"][rev].values()]
        cpus = [median(s["cpu"]) for s in result["stages"][rev].values()]
        imports = [median(s["imports"]) for s in result["stages"][rev].values()]
        total += [f"{sum(walls):.1f}", f"{sum(cpus):.1f}", f"{sum(imports):.1f}"]
        total += [f"{sum(walls) - sum(imports):.1f}"]
    rows.append(total)
    e2e = ", ".join(
        f"{rev} {median(v):.1f} s (runs {', '.join(f'{x:.1f}' for x in v)})"
        for rev, v in result["e2e"].items()
    )
    repeats = len(next(iter(result["e2e"].values())))
    return (
        table(header, rows)
        + f"\n\nMedians of {repeats} runs per stage. `dvc repro --force`: {e2e}.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", action="append", help="git revision (repeatable); default HEAD")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = parser.parse_args()
    revs = args.rev or ["HEAD"]
    text = markdown(profile(revs, args.repeats), revs)
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.out and args.out.resolve() == ROOT / "bench" / "stage_profile.md":
        from mlpipe.tools.readme import fill_include

        readme = ROOT / "README.md"
        readme.write_text(fill_include(readme.read_text(), "bench/stage_profile.md", text))


if __name__ == "__main__":
    main()
