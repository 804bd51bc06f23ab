"""One small interface for everything that watches training, and the fan-out that feeds them.

The training loop reports a plain progress dict every ``log_every`` steps (``step``,
``total_steps``, ``epoch``, ``loss``, ``lr``, ``tokens_per_second``, ``eta_seconds``, and
where known ``grad_norm``, ``val_loss``). The job adds which model it is about, the phase
(loading → training → uploading → done) and the model's final numbers. Each sink turns that
into its own format: TensorBoard events, an MLflow run, Prometheus gauges, a JSONL history
the run report draws its curves from, a console progress line.

Watching must never cost a run: :class:`FanOut` catches a failing sink, warns once and
drops it; training carries on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from oneseek_job.logs import get_logger

__all__ = [
    "PHASES",
    "FanOut",
    "HistorySink",
    "MetricsSink",
    "Phase",
    "finite",
    "flatten_params",
    "is_evaluation",
    "read_history",
]

log = get_logger(__name__)

Phase = Literal["queued", "training", "uploading", "done", "failed"]
PHASES: tuple[Phase, ...] = ("queued", "training", "uploading", "done", "failed")


class MetricsSink(Protocol):
    """Receives a run's telemetry; every method is called on the job's main thread."""

    def model_started(self, key: str, params: Mapping[str, Any]) -> None:
        """``key`` begins training with these (flat, scalar) hyper-parameters."""

    def progress(self, key: str, event: Mapping[str, Any]) -> None:
        """One progress report of the training loop for ``key``."""

    def phase(self, key: str, phase: Phase) -> None:
        """``key`` entered ``phase``."""

    def model_finished(self, key: str, summary: Mapping[str, Any]) -> None:
        """``key`` is trained: ``base_val_loss``, ``final_val_loss``, ``final_train_loss``,
        ``steps``, ``train_tokens``, ``tokens_per_second``, ``improved``, ``certified``."""

    def run_certified(self, info: Mapping[str, Any]) -> None:
        """The run is committed: ``run_id``, ``dna``, ``uri`` (of the run), ``status``."""

    def close(self) -> None:
        """Flush and release everything (files, servers, connections)."""


class FanOut:
    """A :class:`MetricsSink` that forwards to several; a sink that raises is warned about
    once and dropped, so telemetry never fails a training run."""

    def __init__(self, sinks: Sequence[MetricsSink]) -> None:
        self._sinks = list(sinks)

    @property
    def sinks(self) -> list[MetricsSink]:
        """The sinks still active."""
        return list(self._sinks)

    def _each(self, method: str, *args: Any) -> None:
        for sink in list(self._sinks):
            try:
                getattr(sink, method)(*args)
            except Exception as error:
                self._sinks.remove(sink)
                log.warning(
                    "telemetry_sink_disabled",
                    sink=type(sink).__name__,
                    during=method,
                    error=f"{type(error).__name__}: {error}"[:300],
                )

    def model_started(self, key: str, params: Mapping[str, Any]) -> None:
        """Forward to every active sink."""
        self._each("model_started", key, params)

    def progress(self, key: str, event: Mapping[str, Any]) -> None:
        """Forward to every active sink."""
        self._each("progress", key, event)

    def phase(self, key: str, phase: Phase) -> None:
        """Forward to every active sink."""
        self._each("phase", key, phase)

    def model_finished(self, key: str, summary: Mapping[str, Any]) -> None:
        """Forward to every active sink."""
        self._each("model_finished", key, summary)

    def run_certified(self, info: Mapping[str, Any]) -> None:
        """Forward to every active sink."""
        self._each("run_certified", info)

    def close(self) -> None:
        """Close every sink (each once, even if an earlier one fails)."""
        self._each("close")
        self._sinks.clear()


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else None (NaN never reaches a sink
    that would choke on it or draw it)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def is_evaluation(event: Mapping[str, Any]) -> bool:
    """Whether a progress report is the end-of-training evaluation (it repeats the last
    step with ``val_loss``, learning rate 0), not one more training interval."""
    return event.get("val_loss") is not None or event.get("phase") == "done"


def flatten_params(
    params: Mapping[str, Any], prefix: str = ""
) -> dict[str, str | float | int | bool]:
    """Nested settings as flat ``a.b`` keys with scalar values (lists joined by commas, None
    as ``"none"``): the shape TensorBoard's hparams and MLflow params both take."""
    flat: dict[str, str | float | int | bool] = {}
    for name, value in params.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{key}."))
        elif isinstance(value, list | tuple):
            flat[key] = ",".join(str(v) for v in value)
        elif value is None:
            flat[key] = "none"
        elif isinstance(value, str | float | int | bool):
            flat[key] = value
        else:
            flat[key] = str(value)
    return flat


class HistorySink:
    """Appends every progress report of a model to ``<root>/<key>.jsonl``.

    The file is published with the model (``metrics/<key>.jsonl`` in the run) and is what
    the run report draws its curves from. Appending (not truncating) keeps the steps before
    a preemption when the directory survives the restart (it lives beside the checkpoints);
    :func:`read_history` keeps the last report of each step.
    """

    def __init__(self, root: Path) -> None:
        self._root = root

    def path(self, key: str) -> Path:
        """The history file of ``key``."""
        return self._root / f"{key}.jsonl"

    def _append(self, key: str, record: Mapping[str, Any]) -> None:
        self._root.mkdir(parents=True, exist_ok=True)
        clean = {k: (finite(v) if isinstance(v, float) else v) for k, v in record.items()}
        with self.path(key).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(clean, sort_keys=True, allow_nan=False) + "\n")

    def model_started(self, key: str, params: Mapping[str, Any]) -> None:
        """Nothing to record: the hyper-parameters are in the run's results."""

    def progress(self, key: str, event: Mapping[str, Any]) -> None:
        """Append one line (``kind: "train"``)."""
        self._append(key, {"kind": "train", **event})

    def phase(self, key: str, phase: Phase) -> None:
        """Phases are live state only."""

    def model_finished(self, key: str, summary: Mapping[str, Any]) -> None:
        """Append the model's final line (``kind: "final"``)."""
        self._append(key, {"kind": "final", **summary})

    def run_certified(self, info: Mapping[str, Any]) -> None:
        """The run's files are written by then."""

    def close(self) -> None:
        """Every line is written on arrival."""


def read_history(text: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Parse a history file: (train reports ordered by step, last report kept per step;
    the final summary or None). Lines that are not JSON objects are skipped: the file is
    only ever appended to, so a crash can leave a torn last line."""
    by_step: dict[int, dict[str, Any]] = {}
    final: dict[str, Any] | None = None
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if record.get("kind") == "final":
            final = record
        elif isinstance(record.get("step"), int):
            by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)], final
