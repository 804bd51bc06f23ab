"""The chart's ``metrics`` value: the Prometheus port, scrape annotations or a PodMonitor that
selects exactly this release's training pods (rendered in-process by Helm v4)."""

from __future__ import annotations

from typing import Any

import pytest
from helm_python import chart

from tests._k8s import validate_strict
from tests.test_chart import env_of, loaded, only, render

__all__ = ["loaded"]  # the module-scoped chart fixture, shared with test_chart


def _pod(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    template = only(docs, "Job")["spec"]["template"]
    return template, template["spec"]["containers"][0]


def test_metrics_are_off_by_default(loaded: chart.Chart) -> None:
    docs = render(loaded, {})
    template, container = _pod(docs)
    assert "ports" not in container
    assert "ONESEEK_METRICS_PORT" not in env_of(container)
    assert not [k for k in template["metadata"]["annotations"] if k.startswith("prometheus.io")]
    assert not [d for d in docs if d["kind"] == "PodMonitor"]


def test_scrape_annotations_point_at_the_metrics_port(loaded: chart.Chart) -> None:
    docs = render(loaded, {"metrics": {"enabled": True, "port": 9555}})
    template, container = _pod(docs)
    validate_strict(only(docs, "Job"))
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9555"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert container["ports"] == [{"name": "metrics", "containerPort": 9555, "protocol": "TCP"}]
    assert env_of(container)["ONESEEK_METRICS_PORT"]["value"] == "9555"
    assert not [d for d in docs if d["kind"] == "PodMonitor"]


def test_pod_monitor_selects_the_training_pods_by_port_name(loaded: chart.Chart) -> None:
    values = {
        "metrics": {
            "enabled": True,
            "discovery": "podMonitor",
            "interval": "30s",
            "podMonitorLabels": {"release": "kube-prometheus-stack"},
        }
    }
    docs = render(loaded, values)
    template, container = _pod(docs)
    monitor = only(docs, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]["matchLabels"]
    pod_labels = template["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()  # it selects the training pods...
    for doc in docs:  # ...and no other pod of the release (helm test, PostSync verify)
        spec = doc.get("spec", {})
        other = spec.get("template", {}).get("metadata", {}) if doc["kind"] == "Job" else None
        if doc["kind"] == "Pod":
            other = doc["metadata"]
        if other is not None and other is not template["metadata"]:
            assert not selector.items() <= (other.get("labels") or {}).items(), doc["kind"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "30s"}
    assert {p["name"] for p in container["ports"]} == {"metrics"}
    assert not [k for k in template["metadata"]["annotations"] if k.startswith("prometheus.io")]


@pytest.mark.parametrize(
    "bad",
    [
        {"discovery": "serviceMonitor"},
        {"port": 80},  # below 1024: the pod runs as non-root
        {"interval": "often"},
        {"scrape": True},  # unknown key: the schema is closed
    ],
)
def test_schema_rejects_bad_metrics_values(loaded: chart.Chart, bad: dict[str, Any]) -> None:
    with pytest.raises(Exception, match=r"(?i)schema|metrics|validat"):
        render(loaded, {"metrics": {"enabled": True, **bad}})
