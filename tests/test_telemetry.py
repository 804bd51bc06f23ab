"""Telemetry sinks on their own: read back by the tools that consume them, not by our code.

TensorBoard events are read with tensorboard's own EventAccumulator and hparams metadata
parser; the Prometheus page is scraped over HTTP and parsed by prometheus_client's parser;
MLflow is a real ``mlflow server`` with a SQLite backend (tests/test_telemetry_mlflow.py).
"""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from oneseek_job.telemetry import model_files, open_telemetry, read_history
from oneseek_job.telemetry.sinks import FanOut, HistorySink, Phase, flatten_params
from oneseek_job.telemetry.tensorboard import TensorBoardSink

PARAMS = {"lora": {"r": 8, "target_modules": ["q_proj", "v_proj"]}, "train": {"lr": 1e-3}}


def _events(n: int) -> list[dict[str, Any]]:
    return [
        {
            "step": step,
            "total_steps": n,
            "loss": 3.0 - 0.1 * step,
            "lr": 1e-3 * step / n,
            "grad_norm": 1.0 + step,
            "tokens_per_second": 1000.0 + step,
            "eta_seconds": float(n - step),
        }
        for step in range(1, n + 1)
    ]


def _feed(sink: Any, key: str, n: int = 5) -> None:
    sink.model_started(key, PARAMS)
    sink.phase(key, "training")
    for event in _events(n):
        sink.progress(key, event)
    # the end-of-training evaluation repeats the last step (learning rate 0)
    sink.progress(key, {**_events(n)[-1], "lr": 0.0, "val_loss": 2.5})
    sink.model_finished(
        key, {"base_val_loss": 3.5, "final_val_loss": 2.5, "final_train_loss": 2.6, "steps": n}
    )


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def model_started(self, key: str, params: Mapping[str, Any]) -> None:
        self.calls.append(("model_started", key))

    def progress(self, key: str, event: Mapping[str, Any]) -> None:
        self.calls.append(("progress", event["step"]))

    def phase(self, key: str, phase: Phase) -> None:
        self.calls.append(("phase", phase))

    def model_finished(self, key: str, summary: Mapping[str, Any]) -> None:
        self.calls.append(("model_finished", key))

    def run_certified(self, info: Mapping[str, Any]) -> None:
        self.calls.append(("run_certified", info["dna"]))

    def close(self) -> None:
        self.calls.append(("close", None))


class _Broken(_Recorder):
    def progress(self, key: str, event: Mapping[str, Any]) -> None:
        raise ConnectionError("tracking server is down")


def test_a_failing_sink_is_dropped_after_one_warning_and_the_others_carry_on() -> None:
    good, broken = _Recorder(), _Broken()
    fan = FanOut([broken, good])
    with capture_logs() as logs:
        _feed(fan, "m")
        fan.run_certified({"dna": "D"})
        fan.close()
    warnings = [e for e in logs if e["event"] == "telemetry_sink_disabled"]
    assert len(warnings) == 1
    assert warnings[0]["sink"] == "_Broken" and "down" in warnings[0]["error"]
    progress = [c for c in good.calls if c[0] == "progress"]
    assert progress == [("progress", s) for s in (1, 2, 3, 4, 5, 5)]
    assert good.calls[-2:] == [("run_certified", "D"), ("close", None)]
    # the broken sink got nothing after its failure, not even close()
    assert ("close", None) not in broken.calls and fan.sinks == []


def test_flatten_params_gives_scalars_only() -> None:
    flat = flatten_params({**PARAMS, "none": None, "path": Path("/x")})
    assert flat == {
        "lora.r": 8,
        "lora.target_modules": "q_proj,v_proj",
        "train.lr": 1e-3,
        "none": "none",
        "path": "/x",
    }


def test_history_keeps_the_last_report_per_step_and_survives_a_torn_line(tmp_path: Path) -> None:
    sink = HistorySink(tmp_path)
    sink.progress("m", {"step": 1, "loss": 3.0})
    sink.progress("m", {"step": 2, "loss": float("nan")})  # NaN is stored as null, not NaN
    sink.progress("m", {"step": 1, "loss": 2.9})  # replayed after a resume
    sink.model_finished("m", {"final_val_loss": 2.0, "steps": 2})
    text = sink.path("m").read_text() + '{"kind": "train", "step": 3, "lo'  # crash mid-write
    reports, final = read_history(text)
    assert [(r["step"], r["loss"]) for r in reports] == [(1, 2.9), (2, None)]
    assert final is not None and final["final_val_loss"] == 2.0
    assert "NaN" not in text


def _accumulator(path: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_events_read_back_by_tensorboard(tmp_path: Path) -> None:
    from tensorboard.plugins.hparams import metadata as hparams_metadata

    sink = TensorBoardSink(tmp_path)
    _feed(sink, "kb-llama", n=5)
    _feed(sink, "qwen", n=3)
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kb-llama", "qwen"]

    acc = _accumulator(tmp_path / "kb-llama")
    scalars = acc.Tags()["scalars"]
    for tag in ("train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_second"):
        assert tag in scalars, tag
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3, 4, 5]
    assert [round(e.value, 4) for e in loss] == [2.9, 2.8, 2.7, 2.6, 2.5]
    assert [(e.step, e.value) for e in acc.Scalars("val/base_loss")] == [(0, 3.5), (5, 3.5)]
    assert [(e.step, e.value) for e in acc.Scalars("val/adapter_loss")] == [(5, 2.5)]
    assert [e.step for e in _accumulator(tmp_path / "qwen").Scalars("train/loss")] == [1, 2, 3]

    # hparams: parsed with tensorboard's own plugin metadata reader
    content = acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    start = hparams_metadata.parse_session_start_info_plugin_data(
        content[hparams_metadata.SESSION_START_INFO_TAG]
    )
    assert start.hparams["lora.r"].number_value == 8
    assert start.hparams["lora.target_modules"].string_value == "q_proj,v_proj"
    experiment = hparams_metadata.parse_experiment_plugin_data(
        content[hparams_metadata.EXPERIMENT_TAG]
    )
    assert {m.name.tag for m in experiment.metric_infos} >= {"val/adapter_loss", "val/base_loss"}
    assert hparams_metadata.SESSION_END_INFO_TAG in content


def test_model_files_lists_history_and_events(tmp_path: Path) -> None:
    fan = open_telemetry(tmp_path, run_id="run-x")
    _feed(fan, "m", n=2)
    fan.close()
    files = model_files(tmp_path, "m")
    assert "metrics/m.jsonl" in files
    events = [name for name in files if name.startswith("tensorboard/m/events.out.tfevents.")]
    assert len(events) == 1
    assert model_files(tmp_path, "other") == {}


def _scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_prometheus_endpoint_serves_per_model_gauges() -> None:
    from oneseek_job.telemetry.prometheus import PrometheusSink

    sink = PrometheusSink(0, addr="127.0.0.1", run_id="run-x")
    try:
        for key in ("a", "b"):
            sink.phase(key, "queued")
            sink.model_started(key, PARAMS)
        sink.phase("a", "training")
        sink.progress("a", _events(4)[1])
        page = _scrape(sink.port)
        labels = frozenset({("run_id", "run-x"), ("model", "a")})
        assert page[("oneseek_train_step", labels)] == 2
        assert page[("oneseek_train_loss", labels)] == pytest.approx(2.8)
        assert page[("oneseek_train_eta_seconds", labels)] == 2.0
        phases = {
            dict(k[1])["phase"]: v
            for k, v in page.items()
            if k[0] == "oneseek_model_phase" and dict(k[1])["model"] == "a"
        }
        assert phases == {"queued": 0, "training": 1, "uploading": 0, "done": 0, "failed": 0}
        b = {dict(k[1])["phase"] for k, v in page.items() if v == 1 and ("model", "b") in k[1]}
        assert b == {"queued"}
        sink.model_finished("a", {"base_val_loss": 3.0, "final_val_loss": 2.0})
        page = _scrape(sink.port)
        assert page[("oneseek_val_loss", labels | {("of", "adapter")})] == 2.0
    finally:
        sink.close()
    with pytest.raises(OSError):
        _scrape(sink.port)


def test_a_taken_metrics_port_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with capture_logs() as logs:
            fan = open_telemetry(tmp_path, run_id="r", metrics_port=port, tensorboard=False)
        names = [type(s).__name__ for s in fan.sinks]
        fan.close()
    assert names == ["HistorySink"]
    assert any(e["event"] == "metrics_endpoint_unavailable" for e in logs)


def test_console_progress_shows_one_line_per_model_with_loss_throughput_and_eta() -> None:
    import io

    from oneseek_job.progress import ConsoleProgress, eta_text, is_progress_event

    out = io.StringIO()
    progress = ConsoleProgress(out, width=140)
    for key in ("kb-llama", "qwen"):
        progress.phase(key, "queued")
    progress.model_started("kb-llama", PARAMS)
    progress.phase("kb-llama", "training")
    progress.progress("kb-llama", _events(5)[2])
    progress.close()
    screen = out.getvalue()
    final = [line for line in screen.splitlines() if "kb-llama" in line][-1]
    assert "3/5" in final and "loss 2.7000" in final and "1,003 tok/s" in final
    assert "ETA 00:02" in final
    assert "queued" in [line for line in screen.splitlines() if "qwen" in line][-1]

    out = io.StringIO()
    progress = ConsoleProgress(out, width=140)
    _feed(progress, "kb-llama", n=5)
    progress.phase("kb-llama", "done")
    progress.close()
    final = [line for line in out.getvalue().splitlines() if "kb-llama" in line][-1]
    assert "5/5" in final and "done · val 3.5000 → 2.5000 ✓" in final

    assert eta_text(3725) == "1:02:05" and eta_text(None) == "--:--"
    assert is_progress_event({"event": "training", "step": 3})
    assert not is_progress_event({"event": "training", "display_name": "x"})
