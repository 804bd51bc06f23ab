"""Telemetry of a real demo-sized training run through the CLI: Prometheus scraped while it
trains, MLflow on a real tracking server, TensorBoard events read back by tensorboard, and
the signed HTML report opened in headless Chromium.

One run (two tiny models, a few steps) serves every check, so the suite pays for it once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from oneseek_job.demo import DemoWorkspace, build_demo
from oneseek_job.storage import upload_tree
from tests.browser import Browser, find_chromium
from tests.fixtures_s3 import make_s3_store
from tests.servers import SeaweedServer, free_port
from tests.servers_mlflow import MlflowServer
from tests.test_run_report_browser import check_report_page

pytestmark = pytest.mark.slow  # trains two tiny models through the CLI (about a minute)

CLI = [sys.executable, "-m", "oneseek_job.cli"]
RUN_ID = "run-telemetry"
PREFIX = f"oneseek-certified/{RUN_ID}/"
KB, QWEN = "kb-llama-3-1-8b-swedish", "qwen-2-5-7b"
MODELS = [KB, QWEN]


def _env(workspace: DemoWorkspace, root: Path, **extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ONESEEK_", "MLFLOW_"))}
    env.update(
        {
            "BASE_MODELS": "KB-Llama-3.1-8B-Swedish,Qwen-2.5-7B",
            "MODELS_DIR": str(workspace.models_dir),
            "DATASET": str(workspace.dataset),
            "ARTIFACTS_URI": str(root / "artifacts"),
            "ONESEEK_WORK_DIR": str(root / "work"),
            "RUN_ID": RUN_ID,
            "ONESEEK_SEQ_LEN": "256",
            "ONESEEK_BATCH_TOKENS": "2048",
            "ONESEEK_MICRO_BATCH_SIZE": "4",
            "ONESEEK_MAX_STEPS": "8",
            "ONESEEK_LEARNING_RATE": "1e-2",
            "ONESEEK_LOG_EVERY": "2",
            "ONESEEK_SEED": "0",
            "ONESEEK_LOG_FORMAT": "json",
        }
    )
    env.update(extra)
    return env


@dataclass
class _Scraper:
    """Scrapes /metrics every 0.2 s while the job runs (parsed by prometheus_client)."""

    port: int
    pages: list[dict[tuple[str, frozenset[tuple[str, str]]], float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        while not self.stop.is_set():
            try:
                url = f"http://127.0.0.1:{self.port}/metrics"
                with urllib.request.urlopen(url, timeout=2) as response:
                    text = response.read().decode()
            except OSError:
                time.sleep(0.2)
                continue
            self.pages.append(
                {
                    (s.name, frozenset(s.labels.items())): s.value
                    for family in text_string_to_metric_families(text)
                    for s in family.samples
                }
            )
            time.sleep(0.2)


@dataclass
class TelemetryRun:
    artifacts: Path
    result: subprocess.CompletedProcess[str]
    scraped: list[dict[tuple[str, frozenset[tuple[str, str]]], float]]
    mlflow: MlflowServer
    key_pub: Path
    env: dict[str, str]

    @property
    def run_dir(self) -> Path:
        return self.artifacts / PREFIX

    def json(self, name: str) -> Any:
        return json.loads((self.run_dir / name).read_text())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> DemoWorkspace:
    return build_demo(tmp_path_factory.mktemp("telemetry-demo") / "demo", seed=0)


@pytest.fixture(scope="module")
def telemetry_run(
    tmp_path_factory: pytest.TempPathFactory,
    mlflow_server: MlflowServer,
    workspace: DemoWorkspace,  # after mlflow_server: built while the server boots
) -> TelemetryRun:
    from oneseek_job.provenance import generate_keypair

    root = tmp_path_factory.mktemp("telemetry-run")
    mlflow_server.wait()  # booted while the demo workspace was built
    private, public = generate_keypair(root / "keys", name="t")
    port = free_port()
    env = _env(
        workspace,
        root,
        ONESEEK_METRICS_PORT=str(port),
        MLFLOW_TRACKING_URI=mlflow_server.uri,
        ONESEEK_SIGNING_KEY_FILE=str(private),
    )
    scraper = _Scraper(port)
    thread = threading.Thread(target=scraper.run, daemon=True)
    thread.start()
    try:
        result = subprocess.run(
            [*CLI, "train"], env=env, capture_output=True, text=True, timeout=900, check=False
        )
    finally:
        scraper.stop.set()
        thread.join(timeout=5)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    return TelemetryRun(root / "artifacts", result, scraper.pages, mlflow_server, public, env)


def _key(model: str) -> frozenset[tuple[str, str]]:
    return frozenset({("run_id", RUN_ID), ("model", model)})


def _labels(sample_key: tuple[str, frozenset[tuple[str, str]]]) -> dict[str, str]:
    return dict(sample_key[1])


def test_prometheus_endpoint_was_scraped_while_training(telemetry_run: TelemetryRun) -> None:
    pages = telemetry_run.scraped
    assert pages, "the metrics endpoint never answered during the run"
    training: dict[str, set[float]] = {KB: set(), QWEN: set()}
    for page in pages:
        for sample, value in page.items():
            labels = _labels(sample)
            if sample[0] == "oneseek_train_step" and labels["run_id"] == RUN_ID:
                training[labels["model"]].add(value)
    # Mid-training steps were seen (not just the end state), for every model.
    for key, steps in training.items():
        assert steps & {2.0, 4.0, 6.0}, (key, steps)
    # A scrape in the middle of training: the model is in phase training at a step short of
    # the end, with its loss, throughput and ETA.
    mid = []
    for page in pages:
        for sample, value in page.items():
            if sample[0] != "oneseek_model_phase" or value != 1:
                continue
            model = _labels(sample)["model"]
            step = page.get(("oneseek_train_step", _key(model)), 0)
            if _labels(sample)["phase"] == "training" and 0 < step < 8:
                mid.append((page, model))
    assert mid, "no scrape caught a model mid-training"
    page, model = mid[0]
    for metric in ("oneseek_train_loss", "oneseek_train_tokens_per_second"):
        assert page[(metric, _key(model))] > 0, metric
    assert page[("oneseek_train_eta_seconds", _key(model))] >= 0
    # Exactly one phase per model at any time.
    for page in pages:
        for key in MODELS:
            on = [
                _labels(s)["phase"]
                for s, v in page.items()
                if s[0] == "oneseek_model_phase" and _labels(s)["model"] == key and v == 1
            ]
            assert len(on) <= 1, on


def test_tensorboard_events_are_published_and_read_by_tensorboard(
    telemetry_run: TelemetryRun,
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    results = telemetry_run.json("training_results.json")["trained_models"]
    manifest = {f["path"] for f in telemetry_run.json("MANIFEST.json")["files"]}
    for key in MODELS:
        folder = telemetry_run.run_dir / "tensorboard" / key
        events = sorted(folder.glob("events.out.tfevents.*"))
        assert events, key
        for path in events:
            assert f"tensorboard/{key}/{path.name}" in manifest
        assert f"metrics/{key}.jsonl" in manifest
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        acc.Reload()
        assert [e.step for e in acc.Scalars("train/loss")] == [2, 4, 6, 8]
        assert all(e.value > 0 for e in acc.Scalars("train/grad_norm"))
        assert acc.Scalars("train/tokens_per_second")[-1].value > 0
        assert acc.Scalars("val/base_loss")[0].value == pytest.approx(results[key]["base_val_loss"])
        assert acc.Scalars("val/adapter_loss")[-1].value == pytest.approx(
            results[key]["final_val_loss"]
        )


def test_each_model_is_an_mlflow_run_tagged_with_the_dna(telemetry_run: TelemetryRun) -> None:
    from mlflow.tracking import MlflowClient

    from oneseek_job.telemetry.mlflow_sink import experiment_name

    dna = telemetry_run.json("oneseek_dna.json")["dna"]
    client = MlflowClient(tracking_uri=telemetry_run.mlflow.uri)
    experiment = client.get_experiment_by_name(experiment_name(RUN_ID))
    assert experiment is not None
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == sorted(MODELS)
    for key, run in runs.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags["oneseek.dna"] == dna
        assert run.data.tags["oneseek.artifacts_uri"].endswith(PREFIX)
        assert run.data.params["train.max_steps"] == "8"
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert [m.step for m in history] == [2, 4, 6, 8], key


def test_report_is_signed_with_the_run_and_renders_offline(
    telemetry_run: TelemetryRun, tmp_path: Path
) -> None:
    if find_chromium() is None:
        pytest.skip("chromium missing: `make test` installs it (apt)")
    manifest = {f["path"] for f in telemetry_run.json("MANIFEST.json")["files"]}
    assert "report.html" in manifest
    statement = telemetry_run.json("provenance.intoto.json")
    assert "report.html" in {s["name"] for s in statement["subject"]}
    with Browser() as browser:
        probe = check_report_page(browser, telemetry_run.run_dir / "report.html", sorted(MODELS))
    text = str(probe["text"])
    assert telemetry_run.json("oneseek_dna.json")["dna"] in text
    # a changed report no longer verifies: it is covered by MANIFEST and the signatures
    page = telemetry_run.run_dir / "report.html"
    original = page.read_bytes()
    try:
        page.write_bytes(original.replace(b"certified", b"c3rtified", 1))
        verify = subprocess.run(
            [
                *CLI,
                "verify",
                str(telemetry_run.artifacts),
                "--current",
                "--public-key",
                str(telemetry_run.key_pub),
            ],
            env=telemetry_run.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert verify.returncode != 0 and "report.html" in verify.stdout + verify.stderr
    finally:
        page.write_bytes(original)


def test_report_command_renders_any_run_without_torch(
    telemetry_run: TelemetryRun, tmp_path: Path
) -> None:
    out = tmp_path / "fresh.html"
    code = (
        "import sys\n"
        "from oneseek_job.cli import main\n"
        f"sys.argv = ['oneseek-job', 'report', {str(telemetry_run.artifacts)!r}, '--current',"
        f" '--out', {str(out)!r}, '--public-key', {str(telemetry_run.key_pub)!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules, 'report imported torch'\n"
        "print('no torch')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=telemetry_run.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no torch" in result.stdout and "verification passed" in result.stdout
    page = out.read_text()
    assert "verification passed" in page and "signature" in page
    for key in MODELS:
        assert f'data-model="{key}"' in page


def test_a_tracking_server_that_is_down_does_not_fail_training(
    workspace: DemoWorkspace, tmp_path: Path
) -> None:
    env = _env(
        workspace,
        tmp_path,
        BASE_MODELS="KB-Llama-3.1-8B-Swedish",
        ONESEEK_MAX_STEPS="2",
        MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}",
        ONESEEK_TENSORBOARD="false",
    )
    started = time.monotonic()
    result = subprocess.run(
        [*CLI, "train"], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    warnings = [e for e in lines if e["event"] == "mlflow_unavailable"]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning"
    assert any(e["event"] == "certified" for e in lines)
    # off a TTY: JSON lines only, no urllib3 retry chatter on stderr
    assert "Retrying" not in result.stderr, result.stderr[-2000:]
    assert time.monotonic() - started < 300
    # no TensorBoard when switched off; the history is always published
    run = tmp_path / "artifacts" / PREFIX
    assert not (run / "tensorboard").exists() and (run / "metrics" / f"{KB}.jsonl").is_file()


def test_report_command_reads_a_run_from_s3(
    telemetry_run: TelemetryRun, seaweed: SeaweedServer, fresh_bucket: str, tmp_path: Path
) -> None:
    # The certified run, copied byte for byte into a SeaweedFS bucket (CURRENT included).
    store = make_s3_store(seaweed, fresh_bucket, "copied/artifacts")
    try:
        upload_tree(store, telemetry_run.artifacts, "")
    finally:
        store.close()
    out = tmp_path / "s3.html"
    env = {
        **telemetry_run.env,
        "S3_ENDPOINT_URL": seaweed.endpoint_url,
        "AWS_ACCESS_KEY_ID": seaweed.admin.access_key,
        "AWS_SECRET_ACCESS_KEY": seaweed.admin.secret_key,
        "AWS_REGION": seaweed.region,
    }
    result = subprocess.run(
        [
            *CLI,
            "report",
            f"s3://{fresh_bucket}/copied/artifacts",
            "--current",
            "--out",
            str(out),
            "--public-key",
            str(telemetry_run.key_pub),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "verification passed" in result.stdout
    page = out.read_text()
    assert all(f'data-model="{key}"' in page for key in MODELS)
    assert page.count("<polyline") == len(MODELS)  # histories read from the bucket


def _run_on_a_terminal(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a pseudo-terminal; (exit code, screen text)."""
    import os
    import pty
    import re

    leader, follower = pty.openpty()
    proc = subprocess.Popen([*CLI, *args], env=env, stdout=follower, stderr=follower)
    os.close(follower)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    code = proc.wait(timeout=600)
    text = b"".join(chunks).decode("utf-8", errors="replace")
    return code, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_a_terminal_gets_progress_lines_not_json(workspace: DemoWorkspace, tmp_path: Path) -> None:
    env = _env(
        workspace,
        tmp_path,
        BASE_MODELS="KB-Llama-3.1-8B-Swedish",
        ONESEEK_MAX_STEPS="4",
        ONESEEK_LOG_EVERY="1",
        COLUMNS="160",
        TERM="xterm",
    )
    del env["ONESEEK_LOG_FORMAT"]  # the default: JSON off a terminal, console on one
    code, screen = _run_on_a_terminal(env, "train")
    assert code == 0, screen[-3000:]
    lines = screen.splitlines()
    assert not [line for line in lines if line.lstrip().startswith("{")]  # no JSON lines
    progress = [line for line in lines if line.lstrip().startswith(KB) and "/4" in line]
    assert progress, screen[-3000:]
    assert any("loss" in line and "tok/s" in line and "ETA" in line for line in progress)
    assert "val " in progress[-1] and "→" in progress[-1]  # base → adapter validation loss
    # per-step training events are drawn, not logged (milestones still are)
    assert not [line for line in lines if "training" in line and "step=" in line]
    assert any("certified" in line for line in lines)
