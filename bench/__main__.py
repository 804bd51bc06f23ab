"""``python -m bench``: every CPU benchmark in one go, then the table of goals and ratios.

Runs, in order: training throughput (ours vs HF Trainer + PEFT, two baselines), discovery
over 1,000 model folders, CLI cold start, and the storage upload benchmark. Each writes
``bench/results/<name>.json`` (with the machine it ran on); the table at the end reads
the goals back from those results. Total: under 10 minutes on a 2-core machine.

    python -m bench                   # everything, CPU
    python -m bench --only discovery,startup
    python -m bench --upload-size-mib 1024
    python -m bench.train_throughput --gpu    # the GPU mode is its own command
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import Goal, format_table, goals_from_result, machine_info

__all__ = ["BENCHMARKS", "main", "upload_goals"]

BENCHMARKS = ("train_throughput", "discovery", "startup", "upload")
UPLOAD_GOAL_RATIO = 1.0  # storage issue: at least as fast as boto3 defaults, checksums on


def upload_goals(result: dict[str, Any]) -> list[Goal]:
    """Goal rows for ``bench.upload``: one per S3 server it ran against (one run)."""
    goals = goals_from_result(result)
    if goals:
        return goals
    return [
        Goal(
            "upload",
            f"upload speed ours÷boto3 defaults, {run.get('server', '?')} "
            f"({result.get('total_mib', '?')} MiB)",
            float(run["speedup_vs_baseline"]),
            UPLOAD_GOAL_RATIO,
            higher_is_better=True,
            unit="x",
        )
        for run in result.get("servers", [])
        if run.get("speedup_vs_baseline") is not None
    ]


def _train(args: argparse.Namespace) -> list[Goal]:
    from bench import train_throughput

    argv = ["--results-dir", str(args.results_dir)] if args.results_dir else []
    if args.steps is not None:
        argv += ["--steps", str(args.steps)]
    result = train_throughput.main(argv)
    return list(result["goals"]) if result else []


def _discovery(args: argparse.Namespace) -> list[Goal]:
    from bench import discovery

    argv = ["--results-dir", str(args.results_dir)] if args.results_dir else []
    result = discovery.main(argv)
    return list(result["goals"])


def _startup(args: argparse.Namespace) -> list[Goal]:
    from bench import startup

    argv = ["--results-dir", str(args.results_dir)] if args.results_dir else []
    result = startup.main(argv)
    return list(result["goals"])


def _upload(args: argparse.Namespace) -> list[Goal]:
    # bench/upload.py belongs to the storage work; run it only once it exists.
    if importlib.util.find_spec("bench.upload") is None:
        print("upload: bench/upload.py is not there yet; skipped", file=sys.stderr)
        return []
    from bench import upload

    argv = ["--size-mib", str(args.upload_size_mib)]
    if args.results_dir:
        argv += ["--output", str(Path(args.results_dir) / "upload.json")]
    result = upload.main(argv)
    return upload_goals(result if isinstance(result, dict) else {})


_RUNNERS: dict[str, Callable[[argparse.Namespace], list[Goal]]] = {
    "train_throughput": _train,
    "discovery": _discovery,
    "startup": _startup,
    "upload": _upload,
}


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks; print the goal table; 0 when every benchmark ran.

    A missed goal does not fail the command (the numbers are the output); a benchmark
    that crashes does (exit 1), after the others have run.
    """
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated subset of {', '.join(BENCHMARKS)}",
    )
    parser.add_argument("--steps", type=int, default=None, help="train_throughput steps")
    parser.add_argument("--upload-size-mib", type=int, default=512)
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    selected = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in selected if name not in _RUNNERS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")

    started = time.perf_counter()
    goals: list[Goal] = []
    failed: list[str] = []
    seconds: dict[str, float] = {}
    for name in selected:
        print(f"\n=== {name} ===", flush=True)
        begun = time.perf_counter()
        try:
            goals.extend(_RUNNERS[name](args))
        except Exception as error:
            traceback.print_exc()
            failed.append(f"{name}: {type(error).__name__}: {error}".splitlines()[0])
        seconds[name] = time.perf_counter() - begun

    machine = machine_info()
    print("\n=== goals ===")
    print(
        f"machine: {machine['cpu_model']}, {machine['cpu_cores']} cores, "
        f"{machine['ram_gib']} GiB RAM, GPUs: {', '.join(machine['gpus']) or 'none'}, "
        f"torch {machine['versions']['torch']}; load average {machine['load_average']}"
    )
    rows = [
        [g.benchmark, g.metric, g.value, g.target, g.ratio, "yes" if g.met else "NO"] for g in goals
    ]
    print(format_table(["benchmark", "metric", "measured", "goal", "vs goal", "met"], rows))
    print("(vs goal ≥ 1 means met: measured÷goal for rates, goal÷measured for times)")
    timing = ", ".join(f"{name} {s:.0f}s" for name, s in seconds.items())
    print(f"total {time.perf_counter() - started:.0f}s ({timing})")
    for line in failed:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
