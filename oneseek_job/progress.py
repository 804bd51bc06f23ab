"""Console progress on a terminal: one rich line per model with loss, tokens/s and ETA.

A :class:`~oneseek_job.telemetry.MetricsSink` the CLI adds when stdout is a TTY; off a TTY
(pod logs, CI) the job prints JSON lines only and this module is never loaded.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, TextIO

from oneseek_job.telemetry import Phase
from oneseek_job.telemetry.sinks import finite, is_evaluation

__all__ = ["ConsoleProgress", "LiveStdout", "eta_text", "is_progress_event"]


def eta_text(seconds: float | None) -> str:
    """``754`` → ``12:34``; hours as ``1:02:03``; unknown → ``--:--``."""
    if seconds is None:
        return "--:--"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def is_progress_event(event: Mapping[str, Any]) -> bool:
    """A per-interval ``training`` log event: the progress line shows it instead."""
    return event.get("event") == "training" and "step" in event


class LiveStdout:
    """A stream that writes to whatever ``sys.stdout`` is at the moment, so log lines go
    through rich's redirection (above the progress lines) while they are shown."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()

    def isatty(self) -> bool:
        return sys.stdout.isatty()


class ConsoleProgress:
    """One progress line per model: bar, steps, loss, tokens/s, ETA, phase."""

    def __init__(self, file: TextIO | None = None, *, width: int | None = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._progress = Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            console=Console(file=file, width=width, force_terminal=True) if file else None,
            redirect_stdout=True,
            redirect_stderr=True,
        )
        self._tasks: dict[str, Any] = {}
        self._verdicts: dict[str, str] = {}
        self._started = False

    def _task(self, key: str) -> Any:
        if key not in self._tasks:
            if not self._started:
                self._progress.start()
                self._started = True
            self._tasks[key] = self._progress.add_task(key, total=None, info="queued")
        return self._tasks[key]

    def model_started(self, key: str, params: Mapping[str, Any]) -> None:
        """The line exists from the first phase on."""
        self._task(key)

    def progress(self, key: str, event: Mapping[str, Any]) -> None:
        """Steps, loss, throughput and ETA of the latest report."""
        task = self._task(key)
        total, step = event.get("total_steps"), event.get("step")
        if is_evaluation(event):
            info = f"val loss {finite(event.get('val_loss')) or float('nan'):.4f}"
        else:
            loss = finite(event.get("loss"))
            tps = finite(event.get("tokens_per_second"))
            info = " · ".join(
                [
                    f"loss {loss:.4f}" if loss is not None else "loss –",
                    f"{tps:,.0f} tok/s" if tps is not None else "– tok/s",
                    f"ETA {eta_text(finite(event.get('eta_seconds')))}",
                ]
            )
        self._progress.update(
            task,
            total=total if isinstance(total, int) else None,
            completed=step if isinstance(step, int) else 0,
            info=info,
        )

    def phase(self, key: str, phase: Phase) -> None:
        """Phases other than training replace the numbers (queued, uploading, done…)."""
        if phase != "training":
            verdict = self._verdicts.get(key)
            info = f"{phase} · {verdict}" if verdict else phase
            self._progress.update(self._task(key), info=info)

    def model_finished(self, key: str, summary: Mapping[str, Any]) -> None:
        """Base → adapter validation loss, marked ✓ when the adapter is better."""
        base, final = finite(summary.get("base_val_loss")), finite(summary.get("final_val_loss"))
        if base is not None and final is not None:
            mark = "✓" if final < base else "✗"
            self._verdicts[key] = f"val {base:.4f} → {final:.4f} {mark}"
            self._progress.update(self._task(key), info=self._verdicts[key])

    def run_certified(self, info: Mapping[str, Any]) -> None:
        """The certified event is logged; nothing to draw."""

    def close(self) -> None:
        """Leave the final lines on screen."""
        if self._started:
            self._progress.stop()
            self._started = False
