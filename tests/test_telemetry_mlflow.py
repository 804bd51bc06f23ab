"""The MLflow sink against a real ``mlflow server`` (SQLite backend) started by the test,
read back with MLflow's own client; and against a server that is down."""

from __future__ import annotations

import time
from pathlib import Path

from structlog.testing import capture_logs

from oneseek_job.telemetry import open_telemetry
from oneseek_job.telemetry.mlflow_sink import MlflowSink, experiment_name
from tests.servers import free_port
from tests.servers_mlflow import MlflowServer
from tests.test_telemetry import PARAMS, _feed


def test_one_experiment_per_job_run_one_mlflow_run_per_model(mlflow_server: MlflowServer) -> None:
    from mlflow.tracking import MlflowClient

    sink = MlflowSink(mlflow_server.wait().uri, run_id="run-mlflow-1")
    _feed(sink, "kb-llama", n=5)
    _feed(sink, "qwen", n=3)
    sink.run_certified(
        {"dna": "OneSeek-7B-Zero.v1.0.sv.dsX.aaaa.bbbb", "uri": "s3://b/p/run-mlflow-1/"}
    )
    sink.close()

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment = client.get_experiment_by_name(experiment_name("run-mlflow-1"))
    assert experiment is not None
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["kb-llama", "qwen"]
    run = runs["kb-llama"]
    assert run.info.status == "FINISHED"
    assert run.data.params["lora.r"] == "8"
    assert run.data.params["lora.target_modules"] == "q_proj,v_proj"
    assert run.data.tags["oneseek.run_id"] == "run-mlflow-1"
    assert run.data.tags["oneseek.dna"] == "OneSeek-7B-Zero.v1.0.sv.dsX.aaaa.bbbb"
    assert run.data.tags["oneseek.artifacts_uri"] == "s3://b/p/run-mlflow-1/"
    loss = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, round(m.value, 4)) for m in loss] == [
        (1, 2.9),
        (2, 2.8),
        (3, 2.7),
        (4, 2.6),
        (5, 2.5),
    ]
    assert run.data.metrics["val/base_loss"] == 3.5
    assert run.data.metrics["val/adapter_loss"] == 2.5
    assert runs["qwen"].data.tags["oneseek.dna"].startswith("OneSeek-7B-Zero.")
    # a pointer, never a copy of the weights
    assert client.list_artifacts(run.info.run_id) == []


def test_a_tracking_server_that_is_down_warns_once_and_never_blocks(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with capture_logs() as logs:
        fan = open_telemetry(tmp_path, run_id="r", mlflow_tracking_uri=down, tensorboard=False)
        fed = time.monotonic()
        for key in ("a", "b"):
            _feed(fan, key, n=20)
        feeding = time.monotonic() - fed
        fan.close()
    # Feeding never waits on the network; close() waits at most the bounded drain.
    assert feeding < 1.0, feeding
    assert time.monotonic() - started < 60
    warnings = [e for e in logs if e["event"] == "mlflow_unavailable"]
    assert len(warnings) == 1, warnings
    assert warnings[0]["tracking_uri"] == down
    # the history sink beside it still got every report
    assert len((tmp_path / "metrics" / "a.jsonl").read_text().splitlines()) == 22


def test_mlflow_params_fit_the_servers_batch_limit(mlflow_server: MlflowServer) -> None:
    from mlflow.tracking import MlflowClient

    many = {"p": {f"k{i:03d}": i for i in range(250)}, "long": "x" * 9000}
    sink = MlflowSink(mlflow_server.wait().uri, run_id="run-mlflow-2")
    sink.model_started("m", {**PARAMS, **many})
    sink.close()
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment = client.get_experiment_by_name(experiment_name("run-mlflow-2"))
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert len(run.data.params) == 250 + 3 + 1
    assert len(run.data.params["long"]) == 6000
