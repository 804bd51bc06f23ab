"""MLflow, when asked for (``MLFLOW_TRACKING_URI``; ``pip install 'oneseek-job[mlflow]'``).

One MLflow experiment per job run (``oneseek-7b-zero/<RUN_ID>``), one MLflow run per model:
flattened hyper-parameters as params, every progress report as step metrics, the base and
adapter validation losses, and tags ``oneseek.run_id``, ``oneseek.model``, and once the run
is certified ``oneseek.dna`` and ``oneseek.artifacts_uri`` (where the adapter and weights
are: MLflow gets a pointer, never a copy of the weights).

A tracking server is a convenience, not a dependency of training: every call runs on one
background thread, the first failure is logged once (``mlflow_unavailable``) and the sink
goes quiet for the rest of the job; training never waits on MLflow except for a bounded
drain at the end.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from oneseek_job.logs import get_logger
from oneseek_job.telemetry.sinks import Phase, finite, flatten_params, is_evaluation
from oneseek_job.telemetry.tensorboard import SCALAR_TAGS

__all__ = ["MlflowSink", "experiment_name"]

log = get_logger(__name__)

# MLflow's own client retries 7 times with exponential backoff and a 120 s timeout: minutes
# per call against a server that is down. These defaults apply only where the environment
# does not set them.
_CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
_QUEUE_SIZE = 10_000  # reports waiting for a slow server; beyond that they are dropped
_DRAIN_SECONDS = 30.0  # how long close() waits for queued calls


class _QuietRetries(logging.Filter):
    """Drops urllib3's retry warnings for requests to the tracking server (only those)."""

    def __init__(self, tracking_uri: str) -> None:
        super().__init__()
        from urllib.parse import urlsplit

        parts = urlsplit(tracking_uri)
        self._host = f"host='{parts.hostname}', port={parts.port}" if parts.hostname else ""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (self._host and "Retrying" in message and self._host in message)


def experiment_name(run_id: str) -> str:
    """The MLflow experiment of one job run."""
    return f"oneseek-7b-zero/{run_id}"


class MlflowSink:
    """Forwards telemetry to an MLflow tracking server from a background thread."""

    def __init__(self, tracking_uri: str, *, run_id: str) -> None:
        for name, value in _CLIENT_DEFAULTS.items():
            os.environ.setdefault(name, value)
        self._uri = tracking_uri
        self._run_id = run_id
        self._runs: dict[str, str] = {}  # model key -> MLflow run id
        self._client: Any = None
        self._experiment_id = ""
        self._failed = False
        self._dropped = False
        # urllib3 warns about each retry as a plain stderr line; mlflow_unavailable says it
        # once, in the job's own log format.
        logging.getLogger("urllib3.connectionpool").addFilter(_QuietRetries(tracking_uri))
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(_QUEUE_SIZE)
        self._thread = threading.Thread(target=self._work, name="mlflow-sink", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ background worker

    def _work(self) -> None:
        while (call := self._queue.get()) is not None:
            if self._failed:
                continue
            try:
                call()
            except Exception as error:
                self._failed = True
                log.warning(
                    "mlflow_unavailable",
                    tracking_uri=self._uri,
                    error=f"{type(error).__name__}: {error}"[:300],
                    effect="MLflow logging stops for this job; training goes on",
                )

    def _submit(self, call: Callable[[], None]) -> None:
        if self._failed:
            return
        try:
            self._queue.put_nowait(call)
        except queue.Full:
            if not self._dropped:
                self._dropped = True
                log.warning("mlflow_backlog_full", tracking_uri=self._uri)

    def _connect(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=self._uri)
            name = experiment_name(self._run_id)
            experiment = client.get_experiment_by_name(name)
            if experiment is not None:
                self._experiment_id = experiment.experiment_id
            else:
                try:
                    self._experiment_id = client.create_experiment(
                        name, tags={"oneseek.run_id": self._run_id}
                    )
                except Exception:
                    # Another pod of an Indexed Job created it first.
                    found = client.get_experiment_by_name(name)
                    if found is None:
                        raise
                    self._experiment_id = found.experiment_id
            self._client = client
        return self._client

    # ------------------------------------------------------------------ MetricsSink

    def model_started(self, key: str, params: Mapping[str, Any]) -> None:
        """Create the model's MLflow run with its params and tags."""
        flat = flatten_params(params)

        def call() -> None:
            from mlflow.entities import Param

            client = self._connect()
            run = client.create_run(
                self._experiment_id,
                run_name=key,
                tags={"oneseek.run_id": self._run_id, "oneseek.model": key},
            )
            self._runs[key] = run.info.run_id
            # MLflow caps a param value at 6000 characters and a batch at 100 params.
            items = [Param(k, str(v)[:6000]) for k, v in sorted(flat.items())]
            for start in range(0, len(items), 100):
                client.log_batch(run.info.run_id, params=items[start : start + 100])

        self._submit(call)

    def _log(self, key: str, step: int, values: Mapping[str, float]) -> None:
        stamp = int(time.time() * 1000)

        def call() -> None:
            from mlflow.entities import Metric

            run_id = self._runs.get(key)
            if run_id is None or not values:
                return
            metrics = [Metric(name, value, stamp, step) for name, value in values.items()]
            self._connect().log_batch(run_id, metrics=metrics)

        self._submit(call)

    def progress(self, key: str, event: Mapping[str, Any]) -> None:
        """The event's numbers as step metrics (TensorBoard's tag names)."""
        step = event.get("step")
        if not isinstance(step, int):
            return
        fields = ["val_loss"] if is_evaluation(event) else list(SCALAR_TAGS)
        values = {SCALAR_TAGS[f]: finite(event.get(f)) for f in fields}
        self._log(key, step, {k: v for k, v in values.items() if v is not None})

    def phase(self, key: str, phase: Phase) -> None:
        """A tag, so the MLflow UI shows where a model is."""
        self._tag(key, "oneseek.phase", phase)

    def _tag(self, key: str, name: str, value: str) -> None:
        def call() -> None:
            run_id = self._runs.get(key)
            if run_id is not None:
                self._connect().set_tag(run_id, name, value)

        self._submit(call)

    def model_finished(self, key: str, summary: Mapping[str, Any]) -> None:
        """Validation losses and final numbers, then mark the MLflow run finished."""
        steps = summary.get("steps")
        step = steps if isinstance(steps, int) else 0
        values = {
            "val/base_loss": finite(summary.get("base_val_loss")),
            "val/adapter_loss": finite(summary.get("final_val_loss")),
            "train/final_loss": finite(summary.get("final_train_loss")),
            "train/real_tokens": finite(summary.get("train_tokens")),
        }
        self._log(key, step, {k: v for k, v in values.items() if v is not None})
        self._tag(key, "oneseek.improved", str(bool(summary.get("improved"))).lower())

        def call() -> None:
            run_id = self._runs.get(key)
            if run_id is not None:
                self._connect().set_terminated(run_id, "FINISHED")

        self._submit(call)

    def run_certified(self, info: Mapping[str, Any]) -> None:
        """Tag every MLflow run of this job (all pods of an Indexed Job) with DNA and URI."""
        tags = {
            "oneseek.dna": str(info.get("dna", "")),
            "oneseek.artifacts_uri": str(info.get("uri", "")),
            "oneseek.status": str(info.get("status", "")),
        }

        def call() -> None:
            client = self._connect()
            runs = client.search_runs(
                [self._experiment_id],
                filter_string=f"tags.`oneseek.run_id` = '{self._run_id}'",
            )
            for run in runs:
                for name, value in tags.items():
                    client.set_tag(run.info.run_id, name, value)

        self._submit(call)

    def close(self) -> None:
        """Wait (bounded) for queued calls, then stop the worker."""
        deadline = time.monotonic() + _DRAIN_SECONDS
        try:
            self._queue.put(None, timeout=_DRAIN_SECONDS)
        except queue.Full:
            return
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.warning("mlflow_drain_timeout", tracking_uri=self._uri, waited=_DRAIN_SECONDS)
