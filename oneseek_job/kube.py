"""In-cluster extras: BASE_MODELS from a ConfigMap, Events on the Job, run annotations, and
the digest of the image this pod runs (from its own status, for the provenance).

Everything here is optional comfort around the training run. Reading a ConfigMap that the
user asked for (``train --configmap``) fails loudly, because the run would otherwise train
the wrong models; reporting (Events, annotations) never does: outside a cluster, without
RBAC or with the API server unreachable it logs one warning and turns itself off.

Nothing here reads ``os.environ``: ``cli.py`` builds a :class:`KubeContext` with
:meth:`KubeContext.from_environment` and passes it down. The ``kubernetes`` client is imported
inside functions so ``discover`` and ``verify`` start fast.

RBAC this module needs (and the chart's Role grants, nothing more):
``create`` on ``events``; ``patch`` on ``jobs`` (its own Job); ``get`` on ``pods`` (its own
pod's status; pod names are random, so not narrowed by name); ``get`` on ``configmaps``
only for the names given to ``--configmap``.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from oneseek_job.errors import ConfigError, JobError
from oneseek_job.logs import get_logger

__all__ = [
    "ANNOTATION_ARTIFACTS_URI",
    "ANNOTATION_RUN_ID",
    "JobReporter",
    "KubeContext",
    "in_cluster",
    "parse_base_models",
    "pod_image_digest",
    "read_base_models_from_configmap",
]

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
ANNOTATION_RUN_ID = "oneseek.ai/run-id"
ANNOTATION_ARTIFACTS_URI = "oneseek.ai/artifacts-uri"
COMPONENT = "oneseek-job"
# Short timeouts: these calls decorate a multi-hour run and must never stall it.
REQUEST_TIMEOUT = (5.0, 10.0)
# Event messages are cut by the API server at 1 KiB (events.k8s.io); stay under it.
MAX_MESSAGE = 1000
# The training container's name in the chart and the kustomize base.
CONTAINER = "train"
# A registry digest at the end of a container status' imageID, whatever the runtime's prefix
# ("docker-pullable://repo@sha256:…", "repo@sha256:…").
_REPO_DIGEST = re.compile(r"@(sha256:[0-9a-f]{64})$")

log = get_logger(__name__)


@dataclass(frozen=True)
class KubeContext:
    """Where this pod runs and how to reach the API server, from explicit values.

    ``cli.py`` fills it from the environment with :meth:`from_environment`; tests build it directly
    and point ``server`` at a local HTTP server.

    Attributes:
        namespace: the pod's namespace (``ONESEEK_NAMESPACE`` or the service account's).
        job_name: the owning Job (downward API label ``batch.kubernetes.io/job-name``).
        job_uid: the Job's uid (label ``batch.kubernetes.io/controller-uid``); lets
            ``kubectl describe job`` list our Events.
        pod_name: this pod (``ONESEEK_POD_NAME``, else ``HOSTNAME``); reported as instance.
        api_host: ``KUBERNETES_SERVICE_HOST``.
        api_port: ``KUBERNETES_SERVICE_PORT``.
        token_path: the projected service-account token; re-read on every request
            because the kubelet rotates it.
        ca_path: the cluster CA bundle.
        server: explicit API URL; overrides host and port (tests, proxies).
    """

    namespace: str | None = None
    job_name: str | None = None
    job_uid: str | None = None
    pod_name: str | None = None
    api_host: str | None = None
    api_port: str = "443"
    token_path: Path = SA_DIR / "token"
    ca_path: Path = SA_DIR / "ca.crt"
    server: str | None = None

    @classmethod
    def from_environment(cls, env: Mapping[str, str], sa_dir: Path = SA_DIR) -> KubeContext:
        """Build the context from an environment mapping (``cli.py`` passes ``os.environ``).

        Args:
            env: variables: ``KUBERNETES_SERVICE_HOST``/``_PORT``, ``ONESEEK_NAMESPACE``,
                ``ONESEEK_JOB_NAME``, ``ONESEEK_JOB_UID``, ``ONESEEK_POD_NAME``
                (the chart and the kustomize base set the last four via the downward API).
            sa_dir: the service-account mount (namespace, token, ca.crt).
        """
        namespace = env.get("ONESEEK_NAMESPACE") or None
        if namespace is None:
            try:
                namespace = (sa_dir / "namespace").read_text(encoding="utf-8").strip() or None
            except OSError:
                namespace = None
        return cls(
            namespace=namespace,
            job_name=env.get("ONESEEK_JOB_NAME") or None,
            job_uid=env.get("ONESEEK_JOB_UID") or None,
            pod_name=env.get("ONESEEK_POD_NAME") or env.get("HOSTNAME") or None,
            api_host=env.get("KUBERNETES_SERVICE_HOST") or None,
            api_port=env.get("KUBERNETES_SERVICE_PORT") or "443",
            token_path=sa_dir / "token",
            ca_path=sa_dir / "ca.crt",
        )

    @property
    def url(self) -> str | None:
        """The API server URL, or None when neither ``server`` nor a host is known."""
        if self.server:
            return self.server.rstrip("/")
        if not self.api_host:
            return None
        host = f"[{self.api_host}]" if ":" in self.api_host else self.api_host
        return f"https://{host}:{self.api_port}"


def in_cluster(ctx: KubeContext) -> bool:
    """True when an API server is known and a service-account token is readable."""
    return ctx.url is not None and ctx.token_path.is_file()


def _read_token(ctx: KubeContext) -> str:
    return ctx.token_path.read_text(encoding="utf-8").strip()


def _api_client(ctx: KubeContext) -> Any:
    from kubernetes import client  # lazy: keeps CLI start-up fast

    config = client.Configuration(host=ctx.url)
    config.api_key = {"authorization": _read_token(ctx)}
    config.api_key_prefix = {"authorization": "Bearer"}

    def _refresh(cfg: Any) -> None:
        # Bound tokens rotate hourly; the kubelet rewrites the file, we pick it up.
        with contextlib.suppress(OSError):
            cfg.api_key["authorization"] = _read_token(ctx)

    config.refresh_api_key_hook = _refresh
    if ctx.ca_path.is_file():
        config.ssl_ca_cert = str(ctx.ca_path)
    # One attempt per call: the reporter turns itself off on failure instead of waiting.
    config.retries = 0
    return client.ApiClient(config)


def _status(error: BaseException) -> int | None:
    status = getattr(error, "status", None)
    return status if isinstance(status, int) else None


def parse_base_models(value: str) -> list[str]:
    """Split the admin UI's comma-separated BASE_MODELS value, dropping blanks."""
    return [part.strip() for part in value.split(",") if part.strip()]


def read_base_models_from_configmap(
    ctx: KubeContext, name: str, key: str = "BASE_MODELS"
) -> list[str]:
    """Read the model list from ``data[key]`` of ConfigMap ``name`` in the pod's namespace.

    Args:
        ctx: where we run (namespace, API server, token).
        name: the ConfigMap's name (``train --configmap NAME``).
        key: the data key holding the comma-separated list.

    Raises:
        ConfigError: not in a cluster, the ConfigMap or key is missing or empty, or RBAC
            forbids ``get`` on it (the message names the missing permission).
        JobError: the API server could not be reached, rejected the token (401) or answered
            5xx (exit 1: the Job retries).
    """
    if not in_cluster(ctx):
        raise ConfigError(
            f"--configmap {name}: not running in a Kubernetes pod (no API server or "
            "service-account token); set BASE_MODELS instead"
        )
    namespace = ctx.namespace or "default"
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        with _api_client(ctx) as api:
            configmap = client.CoreV1Api(api).read_namespaced_config_map(
                name, namespace, _request_timeout=REQUEST_TIMEOUT
            )
    except ApiException as error:
        status = _status(error)
        if status == 404:
            raise ConfigError(
                f"ConfigMap {namespace}/{name} not found: create it with a {key} entry "
                "or fix --configmap"
            ) from None
        if status == 401:
            raise JobError(
                f"reading ConfigMap {namespace}/{name}: the API server rejected the "
                f"service-account token (HTTP 401) at {ctx.token_path}"
            ) from None
        if status == 403:
            raise ConfigError(
                f"RBAC: service account may not 'get' configmaps/{name} in namespace "
                f"{namespace}; grant verb get on configmaps (resourceNames: [{name}]) "
                "in the job's Role"
            ) from None
        raise JobError(
            f"reading ConfigMap {namespace}/{name} failed: HTTP {status} {error.reason}"
        ) from None
    except (OSError, ValueError) as error:
        raise JobError(
            f"reading ConfigMap {namespace}/{name} failed: API server {ctx.url} "
            f"unreachable ({type(error).__name__})"
        ) from None
    except Exception as error:  # urllib3 wraps connection failures in its own errors
        if type(error).__module__.startswith("urllib3"):
            raise JobError(
                f"reading ConfigMap {namespace}/{name} failed: API server {ctx.url} "
                f"unreachable ({type(error).__name__})"
            ) from None
        raise
    data = configmap.data or {}
    if key not in data:
        raise ConfigError(
            f"ConfigMap {namespace}/{name} has no key {key!r} "
            f"(keys: {', '.join(sorted(data)) or 'none'})"
        )
    models = parse_base_models(data[key])
    if not models:
        raise ConfigError(f"ConfigMap {namespace}/{name}: {key} is empty; list at least one model")
    log.info("configmap_read", tag="config", configmap=name, base_models=models)
    return models


def pod_image_digest(ctx: KubeContext, container: str = CONTAINER) -> str | None:
    """The registry digest of the image this pod's ``container`` runs, from the pod's status.

    The kubelet resolves a tag to the digest it actually pulled, so this is what ran even
    when the pod spec names a mutable tag. Best effort: outside a cluster, without RBAC
    (``get`` on ``pods``) or when the runtime reports no registry digest (an image loaded
    locally has only an image id) it logs why and returns None. Never raises.

    Args:
        ctx: where we run; ``pod_name`` and ``namespace`` name the pod.
        container: the container whose image is wanted; falls back to the only container.
    """
    if not in_cluster(ctx) or not ctx.pod_name:
        return None
    from kubernetes import client

    namespace = ctx.namespace or "default"
    try:
        with _api_client(ctx) as api:
            pod = client.CoreV1Api(api).read_namespaced_pod(
                ctx.pod_name, namespace, _request_timeout=REQUEST_TIMEOUT
            )
    except Exception as error:  # RBAC, network, TLS: provenance then says "unknown"
        log.warning(
            "image_digest_unknown",
            reason=f"reading pod {namespace}/{ctx.pod_name} failed: "
            f"{_status(error) or type(error).__name__}; the Role needs get on pods",
        )
        return None
    statuses = list((pod.status and pod.status.container_statuses) or [])
    mine = [s for s in statuses if s.name == container] or (statuses if len(statuses) == 1 else [])
    image_id = (mine[0].image_id or "") if mine else ""
    match = _REPO_DIGEST.search(image_id)
    if match is None:
        log.warning(
            "image_digest_unknown",
            reason=f"container {container!r} reports no registry digest "
            f"(imageID {image_id[:100]!r})",
        )
        return None
    return match.group(1)


@dataclass
class JobReporter:
    """Records the run on its Job: core/v1 Events plus ``oneseek.ai/*`` annotations.

    Best effort by design: outside a cluster, without a Job name, or after the first 401/403
    or connection failure it logs one warning and every later call is a no-op. Other API
    errors are logged and the next call tries again. Never raises.

    Args:
        ctx: where we run.
        enabled: False builds a reporter that does nothing (e.g. ``--no-kube``).
    """

    ctx: KubeContext
    enabled: bool = field(default=True)
    _api: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        if not in_cluster(self.ctx) or not self.ctx.job_name:
            self._disable(
                "not in a Kubernetes Job (no API server, token or ONESEEK_JOB_NAME); "
                "Job events and annotations are off"
            )

    def _disable(self, reason: str) -> None:
        if self.enabled:
            log.warning("kube_reporting_off", reason=reason)
        self.enabled = False
        if self._api is not None:
            self._api.close()
            self._api = None

    def _client(self) -> Any:
        if self._api is None:
            self._api = _api_client(self.ctx)
        return self._api

    def _call(self, what: str, action: Any) -> None:
        if not self.enabled:
            return
        from kubernetes.client.exceptions import ApiException

        try:
            action(self._client())
        except ApiException as error:
            status = _status(error)
            if status in (401, 403):
                self._disable(
                    f"RBAC forbids {what} in namespace {self.ctx.namespace} (HTTP {status}); "
                    "the Role needs create on events and patch on jobs"
                )
            else:
                log.warning("kube_call_failed", call=what, status=status, reason=error.reason)
        except Exception as error:  # connection refused, TLS, timeouts: give up quietly
            self._disable(f"{what} failed: {type(error).__name__}: {error}")

    def _event(self, reason: str, message: str, type_: str = "Normal") -> None:
        ctx = self.ctx
        now = datetime.now(UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        involved: dict[str, Any] = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": ctx.job_name,
            "namespace": ctx.namespace,
        }
        if ctx.job_uid:
            involved["uid"] = ctx.job_uid
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                # Unique per event, like client-go's recorder: <object>.<random hex>.
                "name": f"{ctx.job_name}.{secrets.token_hex(8)}",
                "namespace": ctx.namespace,
            },
            "involvedObject": involved,
            "reason": reason,
            "message": message[:MAX_MESSAGE],
            "type": type_,
            "source": {"component": COMPONENT},
            "reportingComponent": f"oneseek.ai/{COMPONENT}",
            "reportingInstance": ctx.pod_name or COMPONENT,
            "action": reason,
            "count": 1,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
        }

        def create(api: Any) -> None:
            from kubernetes import client

            client.CoreV1Api(api).create_namespaced_event(
                ctx.namespace,
                client.CoreV1Event.from_dict(body),
                field_manager=COMPONENT,
                _request_timeout=REQUEST_TIMEOUT,
            )

        self._call("create events", create)

    def _annotate(self, annotations: Mapping[str, str]) -> None:
        ctx = self.ctx

        def patch(api: Any) -> None:
            from kubernetes import client

            # A merge patch touches only our keys; the Job's spec is immutable anyway.
            client.BatchV1Api(api).patch_namespaced_job(
                ctx.job_name,
                ctx.namespace,
                {"metadata": {"annotations": dict(annotations)}},
                field_manager=COMPONENT,
                _content_type="application/merge-patch+json",
                _request_timeout=REQUEST_TIMEOUT,
            )

        self._call("patch jobs", patch)

    def started(self, run_id: str, models: Sequence[str]) -> None:
        """Training began: Event ``TrainingStarted`` and the ``oneseek.ai/run-id`` annotation."""
        self._event("TrainingStarted", f"run {run_id}: training {', '.join(models)}")
        self._annotate({ANNOTATION_RUN_ID: run_id})

    def model_trained(self, key: str, metrics: Mapping[str, Any]) -> None:
        """One model's adapter is saved: Event ``ModelTrained`` with its headline metrics."""
        shown = ", ".join(
            f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
            for name, value in metrics.items()
            if isinstance(value, int | float | str)
        )
        self._event("ModelTrained", f"{key} trained" + (f": {shown}" if shown else ""))

    def certified(self, run_id: str, uri: str) -> None:
        """The run is committed: Event ``RunCertified`` and the artifacts-uri annotation."""
        self._event("RunCertified", f"run {run_id} certified at {uri}")
        self._annotate({ANNOTATION_RUN_ID: run_id, ANNOTATION_ARTIFACTS_URI: uri})

    def failed(self, reason: str) -> None:
        """The run failed: Warning Event ``TrainingFailed`` carrying the one-line reason."""
        self._event("TrainingFailed", reason, type_="Warning")

    def close(self) -> None:
        """Release the HTTP connection pool."""
        if self._api is not None:
            self._api.close()
            self._api = None
