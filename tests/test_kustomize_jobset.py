"""The kustomize JobSet overlay (k8s/jobset/), built by `kubectl kustomize`.

Checked by things we did not write: the JobSet CRD's own schema (v0.12.0, unknown fields
refused) and kubernetes-validate --strict for the child Job and its pod. The semantics are
checked as in tests/test_chart_jobset.py: each pod's environment is resolved the way the
kubelet resolves it (downward API, ``$(VAR)`` expansion) from the labels and annotations the
JobSet 0.12 controller and the Job controller put on a pod (``labelAndAnnotateObject`` in
jobset's pkg/controllers/jobset_controller.go; child Job ``<jobset>-<replicatedJob>-<i>``),
then fed to the job's own settings loader and group launcher. The JobSet must agree with the
Helm chart's on everything that decides failures and restarts.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_python import chart

from oneseek_job.config import load_settings
from oneseek_job.kube import parse_base_models
from oneseek_job.launch import group_from_env
from tests._k8s import crd_validate_strict, load_docs, restricted_violations, validate_strict
from tests.test_chart import CHART_DIR, DNS_LABEL, render
from tests.test_chart_jobset import COMPLETION_INDEX, GROUP_ENV, pod_env
from tests.test_kustomize import K8S, kustomize, only

JOBSET = "jobset.sigs.k8s.io/"
COMPONENTS_OFF = "# components:\n#   - ../kueue/label"
COMPONENTS_ON = "components:\n  - ../kueue/label"


def build(tmp: Path, nodes: int = 2, gpus: int = 1, kueue: bool = False) -> list[dict[str, Any]]:
    """The overlay with `completions` (nodes per model) set to ``nodes`` and the base pod's
    GPUs to ``gpus``: the numbers a user edits; everything else must follow them."""
    tree = tmp / "k8s"
    shutil.copytree(K8S, tree)
    spec = tree / "jobset" / "group" / "jobset.yaml"
    text = spec.read_text()
    assert text.count("completions: 2\n") == 1
    spec.write_text(text.replace("completions: 2\n", f"completions: {nodes}\n"))
    job = tree / "base" / "job.yaml"
    gpu_env = '- name: ONESEEK_GPU_COUNT\n              value: "1"'
    text = job.read_text()
    assert text.count(gpu_env) == text.count("nvidia.com/gpu: 1") == 1
    text = text.replace(gpu_env, gpu_env.replace('"1"', f'"{gpus}"'))
    job.write_text(text.replace("nvidia.com/gpu: 1", f"nvidia.com/gpu: {gpus}"))
    if kueue:
        overlay = tree / "jobset" / "kustomization.yaml"
        assert COMPONENTS_OFF in overlay.read_text()
        overlay.write_text(overlay.read_text().replace(COMPONENTS_OFF, COMPONENTS_ON))
    return kustomize(tree / "jobset")


@pytest.fixture(scope="module")
def shipped() -> list[dict[str, Any]]:
    return kustomize(K8S / "jobset")


@pytest.fixture(scope="module")
def helm_jobset() -> Iterator[dict[str, Any]]:
    with chart.Chart.load(CHART_DIR) as loaded:
        docs = render(loaded, {"baseModels": ["a", "b", "c"], "nodesPerModel": 2})
    yield only(docs, "JobSet")


def child_job(jobset: dict[str, Any], index: int) -> dict[str, Any]:
    """The batch/v1 Job the JobSet controller creates for job index ``index``."""
    (replicated,) = jobset["spec"]["replicatedJobs"]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": f"{jobset['metadata']['name']}-{replicated['name']}-{index}",
            "namespace": jobset["metadata"]["namespace"],
        },
        "spec": copy.deepcopy(replicated["template"]["spec"]),
    }


def running_pods(jobset: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pod of the JobSet with what its controllers add (JobSet 0.12, Job, kubelet)."""
    name = jobset["metadata"]["name"]
    (replicated,) = jobset["spec"]["replicatedJobs"]
    subdomain = jobset["spec"]["network"].get("subdomain") or name
    pods = []
    for job_index in range(replicated["replicas"]):
        job = f"{name}-{replicated['name']}-{job_index}"
        jobset_marks = {
            f"{JOBSET}jobset-name": name,
            f"{JOBSET}replicatedjob-name": replicated["name"],
            f"{JOBSET}replicatedjob-replicas": str(replicated["replicas"]),
            f"{JOBSET}global-replicas": str(replicated["replicas"]),
            f"{JOBSET}job-index": str(job_index),
            f"{JOBSET}job-global-index": str(job_index),
            f"{JOBSET}restart-attempt": "0",
        }
        template = replicated["template"]["spec"]["template"]
        for pod_index in range(replicated["template"]["spec"]["completions"]):
            job_marks = {
                COMPLETION_INDEX: str(pod_index),
                "batch.kubernetes.io/job-name": job,
                "batch.kubernetes.io/controller-uid": f"uid-{job_index}",
            }
            labels = {**template["metadata"].get("labels", {}), **jobset_marks, **job_marks}
            annotations = {
                **template["metadata"].get("annotations", {}),
                **jobset_marks,
                COMPLETION_INDEX: str(pod_index),
            }
            pods.append(
                {
                    "metadata": {
                        "name": f"{job}-{pod_index}-x7k2q",
                        "namespace": jobset["metadata"]["namespace"],
                        "labels": labels,
                        "annotations": annotations,
                    },
                    "fqdn": f"{job}-{pod_index}.{subdomain}",
                    "job_index": job_index,
                    "pod_index": pod_index,
                }
            )
    return pods


@pytest.mark.parametrize("nodes", [2, 4])
def test_overlay_renders_one_valid_jobset(tmp_path: Path, nodes: int) -> None:
    docs = build(tmp_path, nodes)
    # The JobSet replaces the Job; the inputs and RBAC stay.
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["ConfigMap", "JobSet", "Role", "RoleBinding", "ServiceAccount"])
    jobset = only(docs, "JobSet")
    crd_validate_strict(jobset)
    for doc in docs:
        assert doc["metadata"]["namespace"] == "oneseek"
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "oneseek-job"
        if doc["kind"] != "JobSet":
            validate_strict(doc)
    (replicated,) = jobset["spec"]["replicatedJobs"]
    for index in range(replicated["replicas"]):
        job = child_job(jobset, index)
        validate_strict(job)
        assert restricted_violations(job["spec"]["template"]["spec"]) == []
    spec = replicated["template"]["spec"]
    assert spec["completions"] == spec["parallelism"] == nodes


def test_checker_refuses_a_misspelt_field(shipped: list[dict[str, Any]]) -> None:
    jobset = copy.deepcopy(only(shipped, "JobSet"))
    jobset["spec"]["replicatedJobs"][0]["replica"] = 3
    with pytest.raises(Exception, match="replica"):
        crd_validate_strict(jobset)


@pytest.mark.parametrize(("nodes", "gpus"), [(2, 1), (4, 2)])
def test_each_pod_trains_its_model_at_its_rank(
    tmp_path: Path, nodes: int, gpus: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = build(tmp_path, nodes, gpus)
    jobset = only(docs, "JobSet")
    configmap = only(docs, "ConfigMap")
    models = parse_base_models(configmap["data"]["BASE_MODELS"])
    configmaps = {configmap["metadata"]["name"]: configmap["data"]}
    (replicated,) = jobset["spec"]["replicatedJobs"]
    assert jobset["spec"]["network"]["enableDNSHostnames"] is True
    assert replicated["replicas"] == len(models) == 3
    container = replicated["template"]["spec"]["template"]["spec"]["containers"][0]
    pods = running_pods(jobset)
    fqdns = {pod["fqdn"]: pod for pod in pods}
    patchable = next(r for r in only(docs, "Role")["rules"] if r["resources"] == ["jobs"])
    trained: dict[int, str] = {}
    for pod in pods:
        env = pod_env(container, pod, configmaps)
        # Kubernetes sets this in every Indexed Job pod: here it is the node rank.
        env["JOB_COMPLETION_INDEX"] = str(pod["pod_index"])
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = load_settings()
        # The count the pods check BASE_MODELS against is the number of child Jobs.
        assert settings.model_count == replicated["replicas"]
        setting, index = settings.model_selector
        assert (setting, index) == ("ONESEEK_MODEL_INDEX", pod["job_index"])
        assert (
            trained.setdefault(pod["job_index"], settings.base_models[index])
            == (settings.base_models[index])
        )
        group = group_from_env(env)
        assert group is not None
        assert (group.nnodes, group.nproc_per_node) == (nodes, gpus) == (nodes, settings.gpu_count)
        assert group.node_rank == pod["pod_index"]
        # The rendezvous host is a real pod: pod 0 of this model's own child Job.
        master = fqdns[group.master_addr]
        assert (master["job_index"], master["pod_index"]) == (pod["job_index"], 0)
        assert all(DNS_LABEL.match(p) and len(p) <= 63 for p in group.master_addr.split("."))
        # kube.py annotates the pod's own Job, which the Role lets it patch.
        assert env["ONESEEK_JOB_NAME"] in patchable["resourceNames"]
    # One model per child Job, each model once, in the order of BASE_MODELS.
    assert [trained[i] for i in sorted(trained)] == models
    assert sorted(patchable["resourceNames"]) == sorted(
        child_job(jobset, i)["metadata"]["name"] for i in range(replicated["replicas"])
    )


def test_group_pod_is_the_base_pod_plus_the_group(shipped: list[dict[str, Any]]) -> None:
    """Security context, volumes, resources, tolerations: the base Job's pod, unchanged."""
    base_job = only(kustomize(K8S), "Job")
    (replicated,) = only(shipped, "JobSet")["spec"]["replicatedJobs"]
    template = copy.deepcopy(replicated["template"]["spec"]["template"])
    expected = copy.deepcopy(base_job["spec"]["template"])
    container = template["spec"]["containers"][0]
    count = next(e for e in container["env"] if e["name"] == "ONESEEK_MODEL_COUNT")
    assert count["valueFrom"]["fieldRef"]["fieldPath"] == (
        f"metadata.labels['{JOBSET}replicatedjob-replicas']"
    )
    dropped = GROUP_ENV | {"JOBSET_NAME", "ONESEEK_MODEL_COUNT"}
    for c in (container, expected["spec"]["containers"][0]):
        c["env"] = [e for e in c["env"] if e["name"] not in dropped]
    assert template == expected


def test_failure_and_restart_rules_match_the_chart(
    shipped: list[dict[str, Any]], helm_jobset: dict[str, Any]
) -> None:
    jobset = only(shipped, "JobSet")
    assert jobset["spec"]["failurePolicy"] == helm_jobset["spec"]["failurePolicy"]
    assert jobset["spec"]["network"] == helm_jobset["spec"]["network"]
    assert "suspend" not in jobset["spec"]
    (ours,) = jobset["spec"]["replicatedJobs"]
    for theirs in helm_jobset["spec"]["replicatedJobs"]:
        mine, helm = ours["template"]["spec"], theirs["template"]["spec"]
        for key in (
            "completionMode",
            "completions",
            "parallelism",
            "backoffLimit",
            "podFailurePolicy",
            "podReplacementPolicy",
            "activeDeadlineSeconds",
        ):
            assert mine[key] == helm[key], key
        pod, helm_pod = mine["template"]["spec"], helm["template"]["spec"]
        for key in ("securityContext", "tolerations", "terminationGracePeriodSeconds"):
            assert pod[key] == helm_pod[key], key
        c, helm_c = pod["containers"][0], helm_pod["containers"][0]
        for key in ("securityContext", "resources", "volumeMounts"):
            assert c[key] == helm_c[key], key
        # The same variables; the overlay needs one more to build the rendezvous address.
        names = {e["name"] for e in c["env"]}
        assert names - {"JOBSET_NAME"} == {e["name"] for e in helm_c["env"]}
    fail_job = {
        code
        for r in ours["template"]["spec"]["podFailurePolicy"]["rules"]
        if r["action"] == "FailJob"
        for code in r["onExitCodes"]["values"]
    }
    assert fail_job == {2, 3, 4}
    count = [
        r for r in ours["template"]["spec"]["podFailurePolicy"]["rules"] if r["action"] == "Count"
    ]
    assert [r["onExitCodes"]["values"] for r in count] == [[75]]


def test_kueue_component_queues_the_jobset(tmp_path: Path) -> None:
    docs = build(tmp_path, kueue=True)
    jobset = only(docs, "JobSet")
    crd_validate_strict(jobset)
    queues = load_docs((K8S / "kueue" / "queues.yaml").read_text())
    local = next(d for d in queues if d["kind"] == "LocalQueue")
    priority = next(d for d in queues if d["kind"] == "WorkloadPriorityClass")
    labels = jobset["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == local["metadata"]["name"]
    assert labels["kueue.x-k8s.io/priority-class"] == priority["metadata"]["name"]
    # One workload admitted at once: no partial admission, nothing on the child Jobs.
    assert not [k for k in jobset["metadata"].get("annotations", {}) if "kueue" in k]
    assert "kueue" not in yaml.safe_dump(jobset["spec"])
    assert [d for d in docs if "kueue" in yaml.safe_dump(d)] == [jobset]
