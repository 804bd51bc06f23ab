"""Shared helpers of the benchmarks: machine description, result files, goal rows, tables.

No torch import here: the startup and discovery benchmarks must not pay for it. The GPU
name is read from torch only when torch is already imported, else from ``nvidia-smi``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

__all__ = [
    "REPO_ROOT",
    "RESULTS_DIR",
    "Goal",
    "format_table",
    "goals_from_result",
    "load_average",
    "machine_info",
    "median_seconds",
    "write_results",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"


@dataclass(frozen=True)
class Goal:
    """One measured number against the goal the issue sets for it.

    ``ratio`` is oriented so that ``>= 1`` always means the goal is met: measured/target
    for higher-is-better numbers (throughput ratios), target/measured for lower-is-better
    ones (seconds).
    """

    benchmark: str
    metric: str
    value: float
    target: float
    higher_is_better: bool
    unit: str = ""

    @property
    def ratio(self) -> float:
        """How far past (>= 1) or short of (< 1) the goal the measurement is."""
        if self.higher_is_better:
            return self.value / self.target if self.target else float("inf")
        return self.target / self.value if self.value > 0 else float("inf")

    @property
    def met(self) -> bool:
        """Whether the goal is reached."""
        return self.ratio >= 1.0

    def as_json(self) -> dict[str, Any]:
        """The goal with its derived fields, for the results file."""
        return {**asdict(self), "ratio": self.ratio, "met": self.met}


def goals_from_result(result: dict[str, Any]) -> list[Goal]:
    """Rebuild the goal rows stored in a results file (``goals`` list); others are skipped."""
    goals: list[Goal] = []
    for item in result.get("goals", []):
        try:
            goals.append(
                Goal(
                    benchmark=str(item["benchmark"]),
                    metric=str(item["metric"]),
                    value=float(item["value"]),
                    target=float(item["target"]),
                    higher_is_better=bool(item["higher_is_better"]),
                    unit=str(item.get("unit", "")),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return goals


def load_average() -> list[float] | None:
    """1/5/15-minute load averages: other work on a shared machine skews timings."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_names() -> list[str]:
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            return []
        except Exception:
            return []
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _ram_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return None


def _versions(*names: str) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = package_version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def machine_info() -> dict[str, Any]:
    """Where a number was measured: CPU, cores, RAM, GPU, library versions, load."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    ram = _ram_bytes()
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable,
        "ram_gib": round(ram / 2**30, 1) if ram else None,
        "gpus": _gpu_names(),
        "versions": _versions("torch", "transformers", "peft", "tokenizers", "oneseek-job"),
        "load_average": load_average(),
    }


def write_results(name: str, payload: dict[str, Any], *, results_dir: Path | None = None) -> Path:
    """Write ``<results_dir>/<name>.json`` with the payload, a timestamp and the machine.

    Args:
        name: benchmark name (the file stem).
        payload: the benchmark's numbers; a ``goals`` list of :class:`Goal` is serialised.
        results_dir: default ``bench/results`` of the repository.
    """
    directory = results_dir or RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    body = dict(payload)
    goals = body.get("goals")
    if isinstance(goals, list):
        body["goals"] = [g.as_json() if isinstance(g, Goal) else g for g in goals]
    document = {
        "benchmark": name,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        **body,
    }
    path = directory / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)
    return path


def median_seconds(action: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    """Median wall time of ``repeats`` calls of ``action`` (and every sample)."""
    samples: list[float] = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), samples


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain left-aligned text table (numbers right-aligned), for terminals and READMEs."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            if value != value:  # NaN
                return "n/a"
            if abs(value) >= 1000:
                return f"{value:,.0f}"
            if abs(value) >= 10:
                return f"{value:.1f}"
            return f"{value:.3g}" if abs(value) < 0.01 and value else f"{value:.2f}"
        return str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    numeric = [
        all(isinstance(row[i], int | float) for row in rows) if rows else False
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i]) for i, v in enumerate(values)
        ]
        return "  ".join(parts).rstrip()

    out = [line(list(headers)), "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in text)
    return "\n".join(out)
