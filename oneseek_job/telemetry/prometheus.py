"""A Prometheus endpoint while the job runs: step, loss, tokens/s, ETA and phase per model.

Enabled by ``ONESEEK_METRICS_PORT``; the chart's ``metrics`` value opens the port and adds
scrape annotations (or a PodMonitor). Gauges live in a registry of their own, so nothing
else of the process (or a second job in a test) leaks into the page.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from oneseek_job.logs import get_logger
from oneseek_job.telemetry.sinks import PHASES, Phase, finite

__all__ = ["GAUGES", "PrometheusSink"]

log = get_logger(__name__)

# progress-event field -> (metric name, help)
GAUGES: dict[str, tuple[str, str]] = {
    "step": ("oneseek_train_step", "Optimizer steps done"),
    "total_steps": ("oneseek_train_total_steps", "Optimizer steps planned"),
    "epoch": ("oneseek_train_epoch", "Current epoch (1-based)"),
    "loss": ("oneseek_train_loss", "Training loss over the last log interval"),
    "lr": ("oneseek_train_learning_rate", "Learning rate"),
    "grad_norm": ("oneseek_train_grad_norm", "Gradient norm before clipping"),
    "tokens_per_second": ("oneseek_train_tokens_per_second", "Training throughput"),
    "eta_seconds": ("oneseek_train_eta_seconds", "Estimated seconds until training ends"),
}


class PrometheusSink:
    """Serves ``/metrics`` on ``addr:port`` from the moment it is created until ``close``."""

    def __init__(self, port: int, *, addr: str = "0.0.0.0", run_id: str = "") -> None:
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        self.registry = CollectorRegistry()
        self._gauges = {
            field: Gauge(name, text, ["run_id", "model"], registry=self.registry)
            for field, (name, text) in GAUGES.items()
        }
        self._phase = Gauge(
            "oneseek_model_phase",
            "1 for the phase each model is in (queued, training, uploading, done, failed)",
            ["run_id", "model", "phase"],
            registry=self.registry,
        )
        self._val = Gauge(
            "oneseek_val_loss",
            "Validation loss of the base model and of the trained adapter",
            ["run_id", "model", "of"],
            registry=self.registry,
        )
        self._run_id = run_id
        try:
            self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as error:
            # A taken port must not cost the run: the caller's FanOut never sees this sink.
            raise OSError(f"metrics port {addr}:{port}: {error.strerror or error}") from error
        self.port = int(self._server.server_address[1])
        log.info("metrics_endpoint", port=self.port, addr=addr)

    def model_started(self, key: str, params: Mapping[str, Any]) -> None:
        """Phases say it (the job reports every model ``queued`` first)."""

    def progress(self, key: str, event: Mapping[str, Any]) -> None:
        """Set each known gauge from the event."""
        for field, gauge in self._gauges.items():
            value = finite(event.get(field))
            if value is not None:
                gauge.labels(self._run_id, key).set(value)

    def phase(self, key: str, phase: Phase) -> None:
        """Exactly one phase of ``key`` is 1."""
        for name in PHASES:
            self._phase.labels(self._run_id, key, name).set(1.0 if name == phase else 0.0)

    def model_finished(self, key: str, summary: Mapping[str, Any]) -> None:
        """Validation losses; ETA 0."""
        for of, field in (("base", "base_val_loss"), ("adapter", "final_val_loss")):
            value = finite(summary.get(field))
            if value is not None:
                self._val.labels(self._run_id, key, of).set(value)
        self._gauges["eta_seconds"].labels(self._run_id, key).set(0.0)

    def run_certified(self, info: Mapping[str, Any]) -> None:
        """Nothing to add once the run is committed."""

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
