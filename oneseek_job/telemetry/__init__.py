"""Watching a run: TensorBoard events, MLflow, a Prometheus endpoint, a JSONL history.

:func:`open_telemetry` builds the sinks a job's settings ask for behind one
:class:`~oneseek_job.telemetry.sinks.FanOut`; the job feeds it progress and publishes the
per-model files (:func:`model_files`) with the model, so they are part of the certified run.
Heavy libraries (tensorboardX, mlflow, prometheus_client) load only when their sink is on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from oneseek_job.layout import METRICS_DIR, TENSORBOARD_DIR
from oneseek_job.logs import get_logger
from oneseek_job.telemetry.sinks import (
    PHASES,
    FanOut,
    HistorySink,
    MetricsSink,
    Phase,
    read_history,
)

__all__ = [
    "METRICS_DIR",
    "PHASES",
    "TENSORBOARD_DIR",
    "FanOut",
    "MetricsSink",
    "Phase",
    "model_files",
    "open_telemetry",
    "read_history",
]

log = get_logger(__name__)


def open_telemetry(
    root: Path,
    *,
    run_id: str,
    tensorboard: bool = True,
    metrics_port: int | None = None,
    mlflow_tracking_uri: str | None = None,
    extra: Sequence[MetricsSink] = (),
) -> FanOut:
    """The sinks the settings ask for. One that cannot start (port taken, library missing)
    is logged and left out: telemetry never stops a training run.

    Args:
        root: local directory for the files published with each model (it should survive a
            preemption, e.g. beside the checkpoints, so a resumed model keeps its history).
        run_id: the job's RUN_ID (MLflow experiment, Prometheus label).
        tensorboard: write TensorBoard event files.
        metrics_port: serve Prometheus metrics on this port (None: off).
        mlflow_tracking_uri: report to this MLflow tracking server (None: off).
        extra: more sinks (the CLI's console progress).
    """
    sinks: list[MetricsSink] = [HistorySink(root / METRICS_DIR)]
    if tensorboard:
        from oneseek_job.telemetry.tensorboard import TensorBoardSink

        sinks.append(TensorBoardSink(root / TENSORBOARD_DIR))
    if metrics_port is not None:
        try:
            from oneseek_job.telemetry.prometheus import PrometheusSink

            sinks.append(PrometheusSink(metrics_port, run_id=run_id))
        except (ImportError, OSError) as error:
            log.warning("metrics_endpoint_unavailable", port=metrics_port, error=str(error))
    if mlflow_tracking_uri:
        from importlib.util import find_spec

        if find_spec("mlflow") is None:
            log.warning(
                "mlflow_unavailable",
                tracking_uri=mlflow_tracking_uri,
                error="mlflow is not installed: pip install 'oneseek-job[mlflow]'",
            )
        else:
            from oneseek_job.telemetry.mlflow_sink import MlflowSink

            sinks.append(MlflowSink(mlflow_tracking_uri, run_id=run_id))
    sinks.extend(extra)
    return FanOut(sinks)


def model_files(root: Path, key: str) -> dict[str, Path]:
    """The telemetry files of ``key`` to publish with it: run-relative name → local path."""
    files: dict[str, Path] = {}
    history = root / METRICS_DIR / f"{key}.jsonl"
    if history.is_file():
        files[f"{METRICS_DIR}/{key}.jsonl"] = history
    events = root / TENSORBOARD_DIR / key
    if events.is_dir():
        for path in sorted(events.rglob("*")):
            if path.is_file():
                files[f"{TENSORBOARD_DIR}/{key}/{path.relative_to(events).as_posix()}"] = path
    return files
