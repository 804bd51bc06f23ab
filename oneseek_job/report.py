"""Human and JSON renderings of discovery results (rich table on a TTY, JSON with --json)."""

from __future__ import annotations

import sys
from typing import Any

from oneseek_job.discovery import DiscoveryReport, Resolution
from oneseek_job.errors import JobError

__all__ = ["discovery_json", "human_size", "print_discovery"]


def human_size(size: int | None) -> str:
    """``1536`` → ``1.5 KiB``."""
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _count(parameters: int | None) -> str:
    if parameters is None:
        return "?"
    for threshold, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if parameters >= threshold:
            return f"{parameters / threshold:.1f}{suffix}"
    return str(parameters)


def discovery_json(
    report: DiscoveryReport, resolutions: list[Resolution], failure: JobError | None
) -> dict[str, Any]:
    """The ``discover --json`` document."""
    return {
        "models_dir": str(report.models_dir),
        "models": [
            {
                "key": m.key,
                "display_name": m.display_name,
                "path": str(m.path),
                "location": m.location,
                "architecture": m.architecture,
                "model_type": m.model_type,
                "parameters": m.num_parameters,
                "size_bytes": m.size_bytes,
                "weight_format": m.weight_format,
                "aliases": list(m.aliases),
            }
            for m in report.models.values()
        ],
        "unusable": [
            {"name": u.name, "path": str(u.path), "reason": u.reason} for u in report.unusable
        ],
        "resolved": [
            {"requested": list(r.requested), "key": r.key, "how": r.how} for r in resolutions
        ],
        "error": None
        if failure is None
        else {"message": str(failure), "exit_code": failure.exit_code},
    }


def print_discovery(
    report: DiscoveryReport, resolutions: list[Resolution], failure: JobError | None
) -> None:
    """Rich tables of models, unusable directories and resolutions."""
    from rich.console import Console
    from rich.table import Table

    # Off a TTY (kubectl logs, CI) nothing should be cut to 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 220)
    table = Table(title=f"Base models in {report.models_dir}")
    for column in ("key", "display name", "architecture", "params", "size", "format", "path"):
        table.add_column(column)
    for m in report.models.values():
        table.add_row(
            m.key,
            m.display_name,
            m.architecture or m.model_type,
            _count(m.num_parameters),
            human_size(m.size_bytes),
            m.weight_format,
            str(m.path) + (f" (aliases: {', '.join(m.aliases)})" if m.aliases else ""),
        )
    console.print(table)
    if report.unusable:
        bad = Table(title="Unusable directories")
        bad.add_column("name")
        bad.add_column("reason")
        for u in report.unusable:
            bad.add_row(u.name, u.reason)
        console.print(bad)
    if resolutions:
        res = Table(title="BASE_MODELS resolution")
        for column in ("requested", "model", "rule"):
            res.add_column(column)
        for r in resolutions:
            res.add_row(", ".join(r.requested), r.key, r.how)
        console.print(res)
    if failure is not None:
        console.print(f"[red]resolution failed:[/red] {failure}")
