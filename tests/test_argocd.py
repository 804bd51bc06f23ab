"""The Argo CD Application's ignoreDifferences: what Kueue and the JobSet controller change on
the Job or JobSet the chart renders is not drift, and every rule names a real field.

Each ``jsonPointers`` entry and each ``jqPathExpressions`` entry (evaluated by jq itself, as
Argo CD evaluates them with gojq) must address a field that the kind's schema has (the
JobSet CRD under tests/crds/, kubernetes-validate's schema for the Job), and the expressions
must apply to the object the chart renders, so a misspelt rule fails here instead of
silently ignoring nothing. Then the live object as Kueue and the JobSet controller leave it
(what ``RunWithPodSetsInfo`` of Kueue's jobset and job integrations and the JobSet webhook
and CRD defaults write into it) must equal the rendered one once the rules are applied.
Argo CD compares a custom resource's lists as a whole but merges maps, so only changes
inside lists and to fields we render count; defaults added to maps (successPolicy,
startupPolicy, failurePolicy.restartStrategy) are no drift to begin with.
"""

from __future__ import annotations

import copy
from typing import Any

import jq
import jsonpointer
import pytest
import yaml
from helm_python import chart

from tests._k8s import schema_at
from tests.test_chart import CHART_DIR, render
from tests.test_kustomize import K8S, only

APP = K8S / "argocd" / "application.yaml"


def application() -> dict[str, Any]:
    app: dict[str, Any] = yaml.safe_load(APP.read_text())
    return app


def rendered(kind: str) -> dict[str, Any]:
    """The Application's Job, or its JobSet with nodesPerModel=2, queued by Kueue."""
    values = copy.deepcopy(application()["spec"]["source"]["helm"]["valuesObject"])
    values["kueue"] = {"queueName": "oneseek"}
    if kind == "JobSet":
        values["nodesPerModel"] = 2
    with chart.Chart.load(CHART_DIR) as loaded:
        docs = render(loaded, values)
    # The training workload, not the PostSync verify hook (a hook is not compared).
    hooks = "argocd.argoproj.io/hook"
    return only([d for d in docs if hooks not in d["metadata"].get("annotations", {})], kind)


def rules_for(obj: dict[str, Any]) -> list[dict[str, Any]]:
    group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
    return [
        r
        for r in application()["spec"]["ignoreDifferences"]
        if r["kind"] == obj["kind"] and r.get("group", "") == group
    ]


def jq_paths(expression: str, obj: dict[str, Any]) -> list[list[str | int]]:
    """The concrete paths an expression addresses in ``obj`` (jq's own ``path()``)."""
    paths: list[list[str | int]] = jq.compile(f"[path({expression})]").input_value(obj).first()
    return paths


def ignoring(obj: dict[str, Any], rules: list[dict[str, Any]]) -> dict[str, Any]:
    """``obj`` without what the rules ignore, removed the way Argo CD removes it."""
    result = copy.deepcopy(obj)
    for rule in rules:
        for pointer in rule.get("jsonPointers", []):
            try:
                parent, last = jsonpointer.JsonPointer(pointer).to_last(result)
            except jsonpointer.JsonPointerException:
                continue  # a parent that is not there: nothing to ignore
            if isinstance(parent, dict):
                parent.pop(last, None)
        for expression in rule.get("jqPathExpressions", []):
            result = jq.compile(f"del({expression})").input_value(result).first()
    return result


def kueue_admitted(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` after Kueue admitted it on a tainted flavor with topology-aware scheduling and
    an admission check, and after the JobSet controller's CRD defaults."""
    live = copy.deepcopy(obj)
    live["spec"]["suspend"] = False
    flavor = {
        "nodeSelector": {"cloud.google.com/gke-nodepool": "h100"},
        "toleration": {"key": "flavor", "operator": "Exists", "effect": "NoSchedule"},
    }
    if obj["kind"] == "JobSet":
        for replicated in live["spec"]["replicatedJobs"]:
            replicated["groupName"] = "default"
            template = replicated["template"]["spec"]["template"]
            meta, spec = template.setdefault("metadata", {}), template["spec"]
            meta.setdefault("labels", {})["kueue.x-k8s.io/tas"] = "true"
            meta.setdefault("annotations", {})["example.com/admission-check"] = "provisioned"
            spec.setdefault("nodeSelector", {}).update(flavor["nodeSelector"])
            spec.setdefault("tolerations", []).append(flavor["toleration"])
            spec.setdefault("schedulingGates", []).append({"name": "kueue.x-k8s.io/topology"})
    else:
        # A Job is a built-in kind: Argo CD diffs it by strategic merge, which keeps keys
        # Kueue adds to maps (pod labels, annotations) and to lists merged by key
        # (schedulingGates by name), but replaces the tolerations list as a whole.
        spec = live["spec"]["template"]["spec"]
        spec.setdefault("nodeSelector", {}).update(flavor["nodeSelector"])
        spec.setdefault("tolerations", []).append(flavor["toleration"])
        # kube.py annotates its own Job with the run and where it publishes it.
        annotations = live["metadata"].setdefault("annotations", {})
        annotations["oneseek.ai/run-id"] = "run-1"
        annotations["oneseek.ai/artifacts-uri"] = "s3://b/p"
    return live


@pytest.mark.parametrize("kind", ["Job", "JobSet"])
def test_every_rule_names_a_real_field(kind: str) -> None:
    desired = rendered(kind)
    live = kueue_admitted(desired)
    rules = rules_for(desired)
    assert rules, f"no ignoreDifferences for the {kind}"
    version = desired["apiVersion"]
    for rule in rules:
        for pointer in rule.get("jsonPointers", []):
            parts: list[str | int] = list(jsonpointer.JsonPointer(pointer).parts)
            assert schema_at(version, kind, parts) is not None, pointer
        for expression in rule.get("jqPathExpressions", []):
            # Applies to what we render (jq fails iterating a field that is not there) ...
            jq_paths(expression, desired)
            # ... and addresses, in the live object, fields of the kind's schema.
            paths = jq_paths(expression, live)
            assert paths, expression
            for path in paths:
                assert schema_at(version, kind, path) is not None, (expression, path)


@pytest.mark.parametrize("kind", ["Job", "JobSet"])
def test_admitted_workload_is_in_sync(kind: str) -> None:
    desired = rendered(kind)
    live = kueue_admitted(desired)
    assert live != desired
    rules = rules_for(desired)
    assert ignoring(live, rules) == ignoring(desired, rules)
    # Nothing we render is ignored beyond what the controllers own.
    assert ignoring(desired, rules)["spec"].keys() == desired["spec"].keys()
    assert "RespectIgnoreDifferences=true" in application()["spec"]["syncPolicy"]["syncOptions"]


def test_checks_catch_a_misspelt_rule() -> None:
    desired = rendered("JobSet")
    live = kueue_admitted(desired)
    version = desired["apiVersion"]
    # A misspelt last field: jq finds a path, the schema has no such field.
    (path, *_) = jq_paths(".spec.replicatedJobs[].template.spec.template.spec.nodeSelectr", live)
    assert schema_at(version, "JobSet", path) is None
    # A misspelt list: jq cannot iterate what is not there.
    with pytest.raises(ValueError, match="Cannot iterate over null"):
        jq_paths(".spec.replicatedJob[].groupName", desired)
    assert schema_at(version, "JobSet", ["spec", "suspended"]) is None
    # And a rule set without the tolerations leaves the admitted JobSet out of sync.
    rules = copy.deepcopy(rules_for(desired))
    for rule in rules:
        rule["jqPathExpressions"] = [
            e for e in rule.get("jqPathExpressions", []) if not e.endswith("tolerations")
        ]
    assert ignoring(live, rules) != ignoring(desired, rules)
