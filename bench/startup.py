"""Cold-start times of the CLI in fresh interpreters (goal: ``--help`` under 0.5 s).

Each command runs ``--repeats`` times in a new process and the median is reported. One
untimed warm-up run per command comes first with bytecode caching on, as an installed
image has its ``.pyc`` files; the page cache is warm, as on a node that pulled the image.

A second run per command, through a tiny wrapper, records which heavy libraries
(torch, transformers, peft, boto3) the command imported: ``--help``, ``discover`` and
``verify`` must not import torch.

``verify`` is timed on a committed run when one is found (``--verify-dir``, else the
demo workspace's ``demo/artifacts``); without one it is timed on an empty artifacts
directory, where it starts, finds no CURRENT run and exits non-zero (the start-up cost
is the same; the result says which case was measured).

Run: ``python -m bench.startup [--repeats 5] [--verify-dir DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, Goal, format_table, write_results
from bench.discovery import build_models_dir

__all__ = ["find_committed_run", "main", "run"]

GOAL_HELP_SECONDS = 0.5
HEAVY_MODULES = ("torch", "transformers", "peft", "boto3", "kubernetes")
_CURRENT_FILE = Path("oneseek-certified") / "OneSeek-7B-Zero-CURRENT.txt"

# Runs the CLI exactly like the console script does, then writes the heavy modules that
# ended up imported (atexit runs after typer's sys.exit).
_WRAPPER = """
import atexit, json, sys
def _report():
    heavy = [m for m in {heavy!r} if m in sys.modules]
    with open({out!r}, "w") as handle:
        json.dump(heavy, handle)
atexit.register(_report)
sys.argv = ["oneseek-job", *{args!r}]
from oneseek_job.cli import main
main()
"""


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "oneseek-job"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "oneseek_job.cli"]


def find_committed_run(candidate: Path | None = None) -> Path | None:
    """An artifacts directory that holds a committed run (its CURRENT pointer), if any."""
    for root in [candidate, REPO_ROOT / "demo" / "artifacts"]:
        if root is not None and (root / _CURRENT_FILE).is_file():
            return root
    return None


def _child_env(*, write_bytecode: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if not write_bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("NO_COLOR", "1")
    return env


def _time_command(args: list[str], repeats: int) -> dict[str, Any]:
    command = [*_cli(), *args]
    # Warm-up with bytecode caching, untimed.
    subprocess.run(command, capture_output=True, check=False, env=_child_env(write_bytecode=True))
    samples: list[float] = []
    codes: set[int] = set()
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        done = subprocess.run(
            command, capture_output=True, check=False, env=_child_env(write_bytecode=False)
        )
        samples.append(time.perf_counter() - started)
        codes.add(done.returncode)
    return {
        "command": "oneseek-job " + " ".join(args),
        "median_seconds": statistics.median(samples),
        "seconds": samples,
        "exit_codes": sorted(codes),
        "heavy_imports": _heavy_imports(args),
    }


def _heavy_imports(args: list[str]) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "modules.json"
        code = _WRAPPER.format(heavy=HEAVY_MODULES, out=str(out), args=args)
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            check=False,
            env=_child_env(write_bytecode=False),
        )
        if not out.is_file():
            return ["<unknown: the wrapper did not finish>"]
        found: list[str] = json.loads(out.read_text())
        return found


def _time_python(code: str, repeats: int) -> dict[str, Any]:
    command = [sys.executable, "-c", code]
    subprocess.run(command, capture_output=True, check=False, env=_child_env(write_bytecode=True))
    samples = []
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        subprocess.run(
            command, capture_output=True, check=False, env=_child_env(write_bytecode=False)
        )
        samples.append(time.perf_counter() - started)
    return {
        "command": f"python -c {code!r}",
        "median_seconds": statistics.median(samples),
        "seconds": samples,
    }


def run(*, repeats: int = 5, verify_dir: Path | None = None) -> dict[str, Any]:
    """Time the commands; return the results (see the module docstring).

    Args:
        repeats: fresh processes per command (median reported).
        verify_dir: artifacts directory with a committed run, for ``verify --current``.
    """
    committed = find_committed_run(verify_dir)
    with tempfile.TemporaryDirectory(prefix="oneseek-bench-startup-") as tmp:
        models = Path(tmp) / "models"
        names = build_models_dir(models, 3, root_share=0.0)
        empty = Path(tmp) / "artifacts"
        empty.mkdir()
        commands = {
            "help": ["--help"],
            "discover": [
                "discover",
                "--models-dir",
                str(models),
                "--base-models",
                names[0],
                "--json",
            ],
            "verify": [
                "verify",
                str(committed or empty),
                "--current",
                *([] if committed else ["--allow-unsigned"]),
            ],
        }
        timings = {name: _time_command(args, repeats) for name, args in commands.items()}
        baseline = _time_python("pass", repeats)
        import_cli = _time_python("import oneseek_job.cli", repeats)
    timings["verify"]["case"] = (
        f"committed run in {committed}"
        if committed
        else "no committed run found: empty artifacts dir (start-up, then 'no CURRENT' exit)"
    )
    help_s = float(timings["help"]["median_seconds"])
    torch_free = all("torch" not in t["heavy_imports"] for t in timings.values())
    return {
        "repeats": repeats,
        "commands": timings,
        "python_startup": baseline,
        "import_cli": import_cli,
        "torch_free": torch_free,
        "goals": [
            Goal(
                "startup",
                "oneseek-job --help (s)",
                help_s,
                GOAL_HELP_SECONDS,
                higher_is_better=False,
                unit="s",
            ),
        ],
    }


def print_result(result: dict[str, Any]) -> None:
    """The human-readable summary of :func:`run`'s result."""
    rows: list[list[object]] = []
    for name, timing in result["commands"].items():
        rows.append(
            [
                timing["command"] if len(timing["command"]) < 60 else f"oneseek-job {name} …",
                timing["median_seconds"],
                ",".join(str(c) for c in timing["exit_codes"]),
                ", ".join(timing["heavy_imports"]) or "none",
            ]
        )
    for key in ("python_startup", "import_cli"):
        rows.append([result[key]["command"], result[key]["median_seconds"], "", ""])
    print(f"cold start, median of {result['repeats']} fresh processes")
    print(format_table(["command", "seconds", "exit", "heavy imports"], rows))
    print(f"verify case: {result['commands']['verify']['case']}")
    print(
        f"torch imported by none of them: {result['torch_free']}; goal --help < "
        f"{GOAL_HELP_SECONDS} s"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: run, print, write ``bench/results/startup.json``."""
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--verify-dir", type=Path, default=None)
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run(repeats=args.repeats, verify_dir=args.verify_dir)
    print_result(result)
    path = write_results("startup", result, results_dir=args.results_dir)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
