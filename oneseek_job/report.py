"""Human and JSON renderings of discovery results (rich table on a TTY, JSON with --json)."""

from __future__ import annotations

import sys
import unicodedata
from typing import Any

from oneseek_job.discovery import EXACT_RULES, DiscoveryReport, Resolution
from oneseek_job.errors import JobError

__all__ = ["discovery_json", "human_size", "print_discovery", "terminal_safe"]


def terminal_safe(text: str) -> str:
    """``text`` with every control, format or unassigned character shown as an escape.

    Names come from directory names and config.json on a shared volume: an ESC sequence in
    one must not repaint the operator's terminal, hide a line or fake a table row.
    """
    return "".join(
        ch if ch == " " or unicodedata.category(ch)[0] not in "CZ" else ascii(ch)[1:-1]
        for ch in text
    )


def _cell(text: str) -> str:
    from rich.markup import escape

    return escape(terminal_safe(text))


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
            {
                "requested": list(r.requested),
                "key": r.key,
                "how": r.how,
                "rules": list(r.rules),
                "exact": r.exact,
                "loose": r.non_exact(),
            }
            for r in resolutions
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
            _cell(m.key),
            _cell(m.display_name),
            _cell(m.architecture or m.model_type),
            _count(m.num_parameters),
            human_size(m.size_bytes),
            _cell(m.weight_format),
            _cell(str(m.path) + (f" (aliases: {', '.join(m.aliases)})" if m.aliases else "")),
        )
    console.print(table)
    if report.unusable:
        bad = Table(title="Unusable directories")
        bad.add_column("name")
        bad.add_column("reason")
        for u in report.unusable:
            bad.add_row(_cell(u.name), _cell(u.reason))
        console.print(bad)
    if resolutions:
        res = Table(title="BASE_MODELS resolution")
        for column in ("requested", "model", "rule"):
            res.add_column(column)
        for r in resolutions:
            for name, rule in zip(r.requested, r.rules or (r.how,) * len(r.requested), strict=True):
                loose = "" if rule in EXACT_RULES else " (loose: check it)"
                res.add_row(_cell(name), _cell(r.key), _cell(rule) + loose)
        console.print(res)
    if failure is not None:
        console.print(f"[red]resolution failed:[/red] {_cell(str(failure))}")
