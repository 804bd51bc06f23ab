"""kube.py against a local HTTP server that speaks the Kubernetes API paths it uses.

No cluster is available here, so the fake answers exactly the three endpoints kube.py
calls (ConfigMap GET, Event POST, Job PATCH) and records every request for the asserts.
Responses are chosen per test: 200/201, 403 (RBAC) and 404.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from oneseek_job import kube
from oneseek_job.errors import ConfigError, JobError
from oneseek_job.kube import (
    ANNOTATION_ARTIFACTS_URI,
    ANNOTATION_RUN_ID,
    JobReporter,
    KubeContext,
    in_cluster,
    pod_image_digest,
    read_base_models_from_configmap,
)

NS = "oneseek"
JOB = "oneseek-job-3f2a9c1d"
JOB_UID = "0b7c6a2e-1d2f-4c3b-9a8e-5f6d7c8b9a01"
TOKEN = "test-token-abc123"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeApi:
    """State shared with the handler: canned answers and the requests received."""

    configmaps: dict[str, dict[str, str]] = field(default_factory=dict)
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> pod status
    forbid: set[str] = field(default_factory=set)  # "configmaps", "events", "jobs"
    requests: list[Recorded] = field(default_factory=list)
    url: str = ""

    def of(self, method: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method]


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _handler(state: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, code: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> Recorded:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            record = Recorded(
                self.command,
                self.path.split("?")[0],
                {k.lower(): v for k, v in self.headers.items()},
                json.loads(raw) if raw else None,
            )
            state.requests.append(record)
            return record

        def _route(self) -> None:
            record = self._record()
            if record.headers.get("authorization") != f"Bearer {TOKEN}":
                self._reply(401, _status(401, "Unauthorized", "Unauthorized"))
                return
            parts = record.path.strip("/").split("/")
            if self.command == "GET" and parts[:3] == ["api", "v1", "namespaces"]:
                ns, resource, name = parts[3], parts[4], parts[5]
                if resource == "pods" and resource not in state.forbid:
                    if name in state.pods:
                        self._reply(
                            200,
                            {
                                "apiVersion": "v1",
                                "kind": "Pod",
                                "metadata": {"name": name, "namespace": ns},
                                "status": state.pods[name],
                            },
                        )
                    else:
                        self._reply(404, _status(404, "NotFound", f'pods "{name}" not found'))
                elif resource in state.forbid:
                    self._reply(
                        403,
                        _status(403, "Forbidden", f'configmaps "{name}" is forbidden'),
                    )
                elif name in state.configmaps:
                    self._reply(
                        200,
                        {
                            "apiVersion": "v1",
                            "kind": "ConfigMap",
                            "metadata": {"name": name, "namespace": ns},
                            "data": state.configmaps[name],
                        },
                    )
                else:
                    self._reply(404, _status(404, "NotFound", f'configmaps "{name}" not found'))
            elif self.command == "POST" and record.path == f"/api/v1/namespaces/{NS}/events":
                if "events" in state.forbid:
                    self._reply(403, _status(403, "Forbidden", "events is forbidden"))
                else:
                    self._reply(201, record.body)
            elif self.command == "PATCH" and record.path == (
                f"/apis/batch/v1/namespaces/{NS}/jobs/{JOB}"
            ):
                if "jobs" in state.forbid:
                    self._reply(403, _status(403, "Forbidden", "jobs is forbidden"))
                else:
                    self._reply(
                        200,
                        {
                            "apiVersion": "batch/v1",
                            "kind": "Job",
                            "metadata": {
                                "name": JOB,
                                "namespace": NS,
                                "annotations": record.body["metadata"]["annotations"],
                            },
                        },
                    )
            else:
                self._reply(404, _status(404, "NotFound", "the server could not find it"))

        do_GET = do_POST = do_PATCH = _route

    return Handler


@pytest.fixture
def api() -> Iterator[FakeApi]:
    state = FakeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def sa_dir(tmp_path: Path) -> Path:
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(TOKEN + "\n")
    (sa / "namespace").write_text(NS)
    return sa


def _ctx(api: FakeApi, sa_dir: Path, **over: Any) -> KubeContext:
    values: dict[str, Any] = {
        "namespace": NS,
        "job_name": JOB,
        "job_uid": JOB_UID,
        "pod_name": f"{JOB}-0-abcde",
        "server": api.url,
        "token_path": sa_dir / "token",
        "ca_path": sa_dir / "ca.crt",
    }
    values.update(over)
    return KubeContext(**values)


def test_context_from_env_reads_downward_api_values(sa_dir: Path) -> None:
    env = {
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        "ONESEEK_JOB_NAME": JOB,
        "ONESEEK_JOB_UID": JOB_UID,
        "HOSTNAME": "pod-1",
    }
    ctx = KubeContext.from_environment(env, sa_dir=sa_dir)
    assert ctx.namespace == NS  # from the service-account mount when not in env
    assert (ctx.job_name, ctx.job_uid, ctx.pod_name) == (JOB, JOB_UID, "pod-1")
    assert ctx.url == "https://10.96.0.1:443"
    assert in_cluster(ctx)
    v6 = KubeContext.from_environment({**env, "KUBERNETES_SERVICE_HOST": "fd00::1"}, sa_dir=sa_dir)
    assert v6.url == "https://[fd00::1]:443"


def test_not_in_cluster_without_token_or_host(tmp_path: Path, sa_dir: Path) -> None:
    assert not in_cluster(KubeContext.from_environment({}, sa_dir=sa_dir))
    no_token = KubeContext.from_environment(
        {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, sa_dir=tmp_path
    )
    assert not in_cluster(no_token)


def test_configmap_read_parses_comma_list(api: FakeApi, sa_dir: Path) -> None:
    api.configmaps["models"] = {"BASE_MODELS": " KB-Llama-3.1-8B-Swedish, ,Mistral-7B-Instruct,"}
    models = read_base_models_from_configmap(_ctx(api, sa_dir), "models")
    assert models == ["KB-Llama-3.1-8B-Swedish", "Mistral-7B-Instruct"]
    (request,) = api.requests
    assert (request.method, request.path) == ("GET", f"/api/v1/namespaces/{NS}/configmaps/models")
    assert request.headers["authorization"] == f"Bearer {TOKEN}"


def test_configmap_token_is_reread_after_rotation(api: FakeApi, sa_dir: Path) -> None:
    api.configmaps["models"] = {"BASE_MODELS": "a"}
    (sa_dir / "token").write_text("stale-token")
    ctx = _ctx(api, sa_dir)
    with pytest.raises(JobError, match="rejected the service-account token") as info:
        read_base_models_from_configmap(ctx, "models")
    assert not isinstance(info.value, ConfigError)  # exit 1: a retry gets a fresh token
    (sa_dir / "token").write_text(TOKEN)
    assert read_base_models_from_configmap(ctx, "models") == ["a"]


def test_configmap_custom_key(api: FakeApi, sa_dir: Path) -> None:
    api.configmaps["admin"] = {"selected": "qwen-2.5-7b"}
    assert read_base_models_from_configmap(_ctx(api, sa_dir), "admin", key="selected") == [
        "qwen-2.5-7b"
    ]


def test_configmap_404_names_the_configmap(api: FakeApi, sa_dir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        read_base_models_from_configmap(_ctx(api, sa_dir), "missing-cm")
    message = str(info.value)
    assert f"ConfigMap {NS}/missing-cm not found" in message
    assert "\n" not in message
    assert info.value.exit_code == 2


def test_configmap_403_names_the_missing_verb(api: FakeApi, sa_dir: Path) -> None:
    api.configmaps["models"] = {"BASE_MODELS": "a"}
    api.forbid.add("configmaps")
    with pytest.raises(ConfigError) as info:
        read_base_models_from_configmap(_ctx(api, sa_dir), "models")
    message = str(info.value)
    assert "RBAC" in message
    assert "'get' configmaps/models" in message
    assert NS in message


def test_configmap_missing_key_and_empty_value(api: FakeApi, sa_dir: Path) -> None:
    api.configmaps["other"] = {"FOO": "bar"}
    api.configmaps["blank"] = {"BASE_MODELS": " , "}
    with pytest.raises(ConfigError, match=r"has no key 'BASE_MODELS' \(keys: FOO\)"):
        read_base_models_from_configmap(_ctx(api, sa_dir), "other")
    with pytest.raises(ConfigError, match="BASE_MODELS is empty"):
        read_base_models_from_configmap(_ctx(api, sa_dir), "blank")


def test_configmap_outside_cluster_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not running in a Kubernetes pod"):
        read_base_models_from_configmap(KubeContext.from_environment({}, sa_dir=tmp_path), "models")


def test_configmap_unreachable_api_is_retryable(sa_dir: Path) -> None:
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    ctx = KubeContext(
        namespace=NS, server="http://127.0.0.1:9", token_path=sa_dir / "token", ca_path=sa_dir
    )
    with pytest.raises(JobError) as info:
        read_base_models_from_configmap(ctx, "models")
    assert not isinstance(info.value, ConfigError)
    assert info.value.exit_code == 1
    assert "unreachable" in str(info.value)


def test_reporter_records_events_and_annotations(api: FakeApi, sa_dir: Path) -> None:
    reporter = JobReporter(_ctx(api, sa_dir))
    assert reporter.enabled
    run_id = "run-5d41402abc4b"
    uri = "s3://oneseek-artifacts/prod/oneseek-certified/run-5d41402abc4b"
    reporter.started(run_id, ["kb-llama-3-1-8b-swedish", "mistral-7b-instruct"])
    reporter.model_trained("kb-llama-3-1-8b-swedish", {"val_loss": 1.234567, "steps": 40})
    reporter.certified(run_id, uri)
    reporter.failed("index 1: model resolution failed")
    reporter.close()

    events = [r.body for r in api.of("POST")]
    assert [e["reason"] for e in events] == [
        "TrainingStarted",
        "ModelTrained",
        "RunCertified",
        "TrainingFailed",
    ]
    assert [e["type"] for e in events] == ["Normal", "Normal", "Normal", "Warning"]
    for event in events:
        assert event["involvedObject"] == {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": JOB,
            "namespace": NS,
            "uid": JOB_UID,
        }
        assert event["metadata"]["name"].startswith(f"{JOB}.")
        assert event["metadata"]["namespace"] == NS
        assert event["reportingInstance"] == f"{JOB}-0-abcde"
    assert len({e["metadata"]["name"] for e in events}) == 4
    assert "kb-llama-3-1-8b-swedish, mistral-7b-instruct" in events[0]["message"]
    assert "val_loss=1.235" in events[1]["message"] and "steps=40" in events[1]["message"]
    assert uri in events[2]["message"]
    assert events[3]["message"] == "index 1: model resolution failed"
    assert all(r.path == f"/api/v1/namespaces/{NS}/events" for r in api.of("POST"))

    patches = api.of("PATCH")
    assert len(patches) == 2
    for patch in patches:
        assert patch.path == f"/apis/batch/v1/namespaces/{NS}/jobs/{JOB}"
        assert patch.headers["content-type"] == "application/merge-patch+json"
        assert patch.headers["authorization"] == f"Bearer {TOKEN}"
    assert patches[0].body == {"metadata": {"annotations": {ANNOTATION_RUN_ID: run_id}}}
    assert patches[1].body == {
        "metadata": {"annotations": {ANNOTATION_RUN_ID: run_id, ANNOTATION_ARTIFACTS_URI: uri}}
    }


def test_reporter_403_warns_once_then_is_a_noop(
    api: FakeApi, sa_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api.forbid.add("events")
    reporter = JobReporter(_ctx(api, sa_dir))
    reporter.started("run-1", ["a"])
    reporter.model_trained("a", {"loss": 1.0})
    reporter.certified("run-1", "s3://b/p")
    reporter.failed("boom")
    assert not reporter.enabled
    # Only the first Event was attempted; nothing after the 403.
    assert [(r.method, r.path) for r in api.requests] == [
        ("POST", f"/api/v1/namespaces/{NS}/events")
    ]
    out = capsys.readouterr().out
    assert out.count("kube_reporting_off") == 1
    assert "RBAC forbids create events" in out


def test_reporter_outside_cluster_is_silent_noop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reporter = JobReporter(KubeContext.from_environment({}, sa_dir=tmp_path))
    reporter.started("run-1", ["a"])
    reporter.certified("run-1", "s3://b/p")
    reporter.failed("x")
    assert not reporter.enabled
    assert capsys.readouterr().out.count("kube_reporting_off") == 1


def test_reporter_connection_refused_never_raises(
    sa_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx = KubeContext(
        namespace=NS,
        job_name=JOB,
        server="http://127.0.0.1:9",
        token_path=sa_dir / "token",
        ca_path=sa_dir / "ca.crt",
    )
    reporter = JobReporter(ctx)
    assert reporter.enabled
    reporter.started("run-1", ["a"])
    reporter.certified("run-1", "s3://b/p")
    assert not reporter.enabled
    assert capsys.readouterr().out.count("kube_reporting_off") == 1


def test_reporter_other_errors_keep_trying(api: FakeApi, sa_dir: Path) -> None:
    # A wrong Job name gets 404 on the PATCH: logged, but Events keep flowing.
    reporter = JobReporter(_ctx(api, sa_dir, job_name="gone-job"))
    reporter.started("run-1", ["a"])
    reporter.certified("run-1", "s3://b/p")
    assert reporter.enabled
    assert [r.method for r in api.requests] == ["POST", "PATCH", "POST", "PATCH"]


def test_kube_module_does_not_import_kubernetes_at_import_time() -> None:
    import subprocess
    import sys

    code = "import sys, oneseek_job.kube; print('kubernetes' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    assert kube.__all__  # the module's public surface is declared


POD = f"{JOB}-0-abcde"
DIGEST = "sha256:" + "4f" * 32


def _container(name: str, image_id: str) -> dict[str, Any]:
    return {
        "name": name,
        "image": "ghcr.io/oneseek/oneseek-job:0.1.0",
        "imageID": image_id,
        "ready": True,
        "restartCount": 0,
    }


@pytest.mark.parametrize(
    "image_id",
    [
        f"ghcr.io/oneseek/oneseek-job@{DIGEST}",  # containerd
        f"docker-pullable://ghcr.io/oneseek/oneseek-job@{DIGEST}",  # dockershim / cri-dockerd
    ],
)
def test_image_digest_comes_from_the_pods_own_status(
    api: FakeApi, sa_dir: Path, image_id: str
) -> None:
    other = "sha256:" + "0a" * 32
    api.pods[POD] = {
        "containerStatuses": [
            _container("metrics-sidecar", f"docker.io/library/busybox@{other}"),
            _container("train", image_id),
        ]
    }
    assert pod_image_digest(_ctx(api, sa_dir)) == DIGEST
    [request] = api.of("GET")
    assert request.path == f"/api/v1/namespaces/{NS}/pods/{POD}"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"


def test_image_digest_unknown_is_none_never_an_error(api: FakeApi, sa_dir: Path) -> None:
    # An image loaded into the node's runtime by hand has an image id, not a registry digest.
    api.pods[POD] = {"containerStatuses": [_container("train", "sha256:" + "1b" * 32)]}
    assert pod_image_digest(_ctx(api, sa_dir)) is None
    # No such pod, RBAC forbids it, or not in a cluster at all: None, and no exception.
    assert pod_image_digest(_ctx(api, sa_dir, pod_name="gone")) is None
    api.forbid.add("pods")
    api.pods[POD] = {"containerStatuses": [_container("train", f"repo@{DIGEST}")]}
    assert pod_image_digest(_ctx(api, sa_dir)) is None
    requests = len(api.requests)
    assert pod_image_digest(_ctx(api, sa_dir, server=None)) is None
    assert len(api.requests) == requests


def test_train_records_the_running_digest(api: FakeApi, sa_dir: Path) -> None:
    """What the provenance gets: the pod's digest wins over a configured one (a tag or a
    stale ONESEEK_IMAGE_DIGEST), and the configured one stays when the pod cannot say."""
    from oneseek_job.cli import _with_running_image_digest
    from oneseek_job.config import load_settings

    api.pods[POD] = {"containerStatuses": [_container("train", f"repo@{DIGEST}")]}
    configured = load_settings(image_digest="sha256:" + "99" * 32)
    assert _with_running_image_digest(configured, _ctx(api, sa_dir)).image_digest == DIGEST
    assert _with_running_image_digest(load_settings(), _ctx(api, sa_dir)).image_digest == DIGEST
    api.forbid.add("pods")
    kept = _with_running_image_digest(configured, _ctx(api, sa_dir))
    assert kept.image_digest == configured.image_digest
