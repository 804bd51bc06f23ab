"""TensorBoard event files, one run directory per model: ``<root>/<key>/events.out.tfevents.*``.

Written with tensorboardX, a maintained writer without TensorFlow (numpy + protobuf, where
tensorboard itself pulls in grpcio, werkzeug and markdown that a training image does not
need). The directory is published under the run prefix (``tensorboard/<key>/``), so
``tensorboard --logdir <run>/tensorboard`` shows every model of a run side by side.

Tags: ``train/loss``, ``train/learning_rate``, ``train/grad_norm``,
``train/tokens_per_second``, ``val/base_loss`` (at step 0), ``val/adapter_loss``; the
hyper-parameters as an hparams session whose metrics are the validation losses.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from oneseek_job.telemetry.sinks import Phase, finite, flatten_params, is_evaluation

__all__ = ["HPARAM_METRICS", "SCALAR_TAGS", "TensorBoardSink"]

# progress-event field -> TensorBoard tag
SCALAR_TAGS: dict[str, str] = {
    "loss": "train/loss",
    "lr": "train/learning_rate",
    "grad_norm": "train/grad_norm",
    "tokens_per_second": "train/tokens_per_second",
    "val_loss": "val/adapter_loss",
}
# The metrics the hparams dashboard compares sessions (models) by.
HPARAM_METRICS = ("val/adapter_loss", "val/base_loss", "train/loss")


class TensorBoardSink:
    """One ``SummaryWriter`` per model under ``root``."""

    def __init__(self, root: Path, *, flush_secs: int = 30) -> None:
        self._root = root
        self._flush_secs = flush_secs
        self._writers: dict[str, Any] = {}
        self._last_step: dict[str, int] = {}
        self._val_steps: dict[str, set[int]] = {}  # steps with an adapter validation point

    def _writer(self, key: str) -> Any:
        writer = self._writers.get(key)
        if writer is None:
            from tensorboardX import SummaryWriter

            writer = SummaryWriter(logdir=str(self._root / key), flush_secs=self._flush_secs)
            self._writers[key] = writer
        return writer

    def model_started(self, key: str, params: Mapping[str, Any]) -> None:
        """Open the model's writer and record its hparams session start."""
        from tensorboardX.summary import hparams

        experiment, start, _ = hparams(flatten_params(params), dict.fromkeys(HPARAM_METRICS, 0.0))
        writer = self._writer(key)
        writer.file_writer.add_summary(experiment)
        writer.file_writer.add_summary(start)

    def progress(self, key: str, event: Mapping[str, Any]) -> None:
        """One scalar per known, finite field, at the event's step."""
        step = event.get("step")
        if not isinstance(step, int):
            return
        self._last_step[key] = step
        writer = self._writer(key)
        fields = ["val_loss"] if is_evaluation(event) else list(SCALAR_TAGS)
        for field in fields:
            tag = SCALAR_TAGS[field]
            value = finite(event.get(field))
            if value is not None:
                writer.add_scalar(tag, value, step)
                if field == "val_loss":
                    self._val_steps.setdefault(key, set()).add(step)

    def phase(self, key: str, phase: Phase) -> None:
        """Phases are live state; TensorBoard shows history."""

    def model_finished(self, key: str, summary: Mapping[str, Any]) -> None:
        """Base and adapter validation loss, then close the session and the file."""
        from tensorboardX.summary import hparams

        writer = self._writer(key)
        steps = summary.get("steps")
        last = steps if isinstance(steps, int) else self._last_step.get(key, 0)
        base = finite(summary.get("base_val_loss"))
        if base is not None:
            writer.add_scalar("val/base_loss", base, 0)
            writer.add_scalar("val/base_loss", base, last)  # a flat reference line
        final = finite(summary.get("final_val_loss"))
        if final is not None and last not in self._val_steps.get(key, set()):
            writer.add_scalar("val/adapter_loss", final, last)
        _, _, end = hparams({}, {})
        writer.file_writer.add_summary(end)
        writer.close()
        del self._writers[key]

    def run_certified(self, info: Mapping[str, Any]) -> None:
        """Nothing to add once the run is committed."""

    def close(self) -> None:
        """Close the writers of models that never finished (their events so far stay)."""
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
