"""The chart's multi-node form: one JobSet of torchrun groups, one replicated job per model.

Each rendered JobSet is checked by things we did not write: the JobSet CRD's own schema
(v0.12.0, unknown fields refused), Kubeflow Trainer's pydantic model of JobSet v1alpha2
(nothing it does not know survives the round trip), and kubernetes-validate --strict for
every embedded Job and pod template. The semantics are checked by feeding each pod's
environment, resolved the way the kubelet resolves it, to the job's own settings loader and
group launcher: the model a pod trains and its place in the group come from what the code
reads, not from what the template says it sets.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from helm_python import chart
from helm_python.errors import HelmRenderError
from kubeflow_trainer_api.models.jobset_v1alpha2_job_set import JobsetV1alpha2JobSet
from kubeflow_trainer_api.models.trainer_v1alpha1_train_job import TrainerV1alpha1TrainJob

from oneseek_job.config import load_settings
from oneseek_job.launch import group_from_env
from tests._k8s import crd_validate_strict, restricted_violations, validate_strict
from tests.test_chart import CHART_DIR, DNS_LABEL, NAMESPACE, RELEASE, ROOT, env_of, render

MODELS = ["KB-Llama-3.1-8B-Swedish", "Mistral-7B-Instruct", "llama-2-7b"]
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
# What the group adds to the single-pod template, and what names the pod's own Job.
GROUP_ENV = {
    "ONESEEK_MODEL_INDEX",
    "PET_NNODES",
    "PET_NPROC_PER_NODE",
    "PET_NODE_RANK",
    "PET_MASTER_ADDR",
    "PET_MASTER_PORT",
}
TRAINJOB = ROOT / "docs" / "examples" / "trainjob.yaml"


@pytest.fixture(scope="module")
def loaded() -> Iterator[chart.Chart]:
    with chart.Chart.load(CHART_DIR) as loaded_chart:
        yield loaded_chart


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def only_jobset(loaded: chart.Chart, values: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    docs = render(loaded, {"baseModels": MODELS, **values})
    (jobset,) = kinds(docs, "JobSet")
    assert not kinds(docs, "Job"), "a JobSet replaces the Job, never both"
    return jobset, docs


def child_job(jobset: dict[str, Any], replicated: dict[str, Any]) -> dict[str, Any]:
    """The batch/v1 Job the JobSet controller creates for job index 0 of a replicated job."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": f"{jobset['metadata']['name']}-{replicated['name']}-0",
            "namespace": NAMESPACE,
        },
        "spec": copy.deepcopy(replicated["template"]["spec"]),
    }


def _field(pod: dict[str, Any], path: str) -> str:
    """A downward-API fieldRef of ``pod``, as the kubelet resolves it."""
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return str(pod["metadata"][match.group(1)][match.group(2)])
    assert path in {"metadata.name", "metadata.namespace"}, path
    return str(pod["metadata"][path.split(".")[1]])


# Kubernetes' dependent variables: $(NAME) of a variable defined earlier in the list; $$
# is a literal $; a reference to anything else stays as written.
_ENV_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """``value`` with ``$(NAME)`` expanded as the kubelet expands a container's ``value``."""
    return _ENV_REF.sub(
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value
    )


def pod_env(
    container: dict[str, Any], pod: dict[str, Any], configmaps: dict[str, dict[str, str]]
) -> dict[str, str]:
    """The container's environment in a running pod (Secrets left out: none are needed)."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        source = var.get("valueFrom")
        if source is None:
            env[var["name"]] = expand(var["value"], env)
        elif "fieldRef" in source:
            env[var["name"]] = _field(pod, source["fieldRef"]["fieldPath"])
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[var["name"]] = configmaps[ref["name"]][ref["key"]]
    return env


def running_pods(jobset: dict[str, Any], replicated: dict[str, Any]) -> list[dict[str, Any]]:
    """The pods of a replicated job, with what Kubernetes adds: the completion index (as
    annotation, label and JOB_COMPLETION_INDEX), hostname and subdomain."""
    name = jobset["metadata"]["name"]
    job = f"{name}-{replicated['name']}-0"
    pods = []
    for index in range(replicated["template"]["spec"]["completions"]):
        marks = {COMPLETION_INDEX: str(index)}
        pods.append(
            {
                "metadata": {
                    "name": f"{job}-{index}-abcde",
                    "namespace": NAMESPACE,
                    "annotations": dict(marks),
                    "labels": {**marks, "batch.kubernetes.io/controller-uid": "uid-1"},
                },
                "hostname": f"{job}-{index}",
                "index": index,
            }
        )
    return pods


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_rendered_workload_validates(loaded: chart.Chart, nodes: int) -> None:
    docs = render(loaded, {"baseModels": MODELS, "nodesPerModel": nodes})
    if nodes == 1:
        # Today's Indexed Job, untouched: one index per model, no JobSet.
        assert not kinds(docs, "JobSet")
        (job,) = kinds(docs, "Job")
        assert job["apiVersion"] == "batch/v1"
        assert job["spec"]["completionMode"] == "Indexed"
        assert job["spec"]["completions"] == len(MODELS)
        validate_strict(job)
        return
    jobset, _ = only_jobset(loaded, {"nodesPerModel": nodes})
    crd_validate_strict(jobset)
    # Kubeflow Trainer's model of JobSet keeps every field we render: nothing unknown.
    parsed = JobsetV1alpha2JobSet.from_dict(jobset)
    assert parsed is not None and parsed.to_dict() == jobset
    for replicated in jobset["spec"]["replicatedJobs"]:
        job = child_job(jobset, replicated)
        validate_strict(job)
        assert restricted_violations(job["spec"]["template"]["spec"]) == []


def test_checkers_refuse_what_they_should(loaded: chart.Chart) -> None:
    """The three checkers above can fail: a misspelt field is caught by each."""
    jobset, _ = only_jobset(loaded, {"nodesPerModel": 2})
    misspelt = copy.deepcopy(jobset)
    misspelt["spec"]["network"]["enableDnsHostnames"] = True
    with pytest.raises(Exception, match="enableDnsHostnames"):
        crd_validate_strict(misspelt)
    parsed = JobsetV1alpha2JobSet.from_dict(misspelt)
    assert parsed is not None and parsed.to_dict() != misspelt
    job = child_job(jobset, jobset["spec"]["replicatedJobs"][0])
    job["spec"]["template"]["spec"]["containers"][0]["envv"] = []
    with pytest.raises(Exception, match="envv"):
        validate_strict(job)


@pytest.mark.parametrize("nodes", [2, 4])
def test_each_pod_trains_its_model_at_its_rank(
    loaded: chart.Chart, nodes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobset, docs = only_jobset(loaded, {"nodesPerModel": nodes, "gpu": {"count": 2}})
    name = jobset["metadata"]["name"]
    subdomain = jobset["spec"]["network"].get("subdomain", name)
    assert jobset["spec"]["network"]["enableDNSHostnames"] is True
    configmaps = {d["metadata"]["name"]: d["data"] for d in kinds(docs, "ConfigMap")}
    (role,) = kinds(docs, "Role")
    patchable = next(r for r in role["rules"] if r["resources"] == ["jobs"])["resourceNames"]
    replicated_jobs = jobset["spec"]["replicatedJobs"]
    assert len({r["name"] for r in replicated_jobs}) == len(MODELS)
    trained = []
    for replicated in replicated_jobs:
        spec = replicated["template"]["spec"]
        assert replicated["replicas"] == 1
        assert spec["completionMode"] == "Indexed"
        assert spec["completions"] == spec["parallelism"] == nodes
        # JobSet's documented hostname: <jobset>-<replicatedJob>-<jobIndex>-<podIndex>.
        pods = running_pods(jobset, replicated)
        first = f"{pods[0]['hostname']}.{subdomain}"
        assert all(DNS_LABEL.match(label) and len(label) <= 63 for label in first.split("."))
        models_of_group = set()
        for pod in pods:
            container = spec["template"]["spec"]["containers"][0]
            env = pod_env(container, pod, configmaps)
            # Kubernetes sets this in every Indexed Job pod: here it is the node rank.
            env["JOB_COMPLETION_INDEX"] = str(pod["index"])
            for key, value in env.items():
                monkeypatch.setenv(key, value)
            settings = load_settings()
            setting, index = settings.model_selector
            assert setting == "ONESEEK_MODEL_INDEX" and index is not None
            models_of_group.add(settings.base_models[index])
            group = group_from_env(env)
            assert group is not None
            assert (group.nnodes, group.nproc_per_node) == (nodes, 2)
            assert group.node_rank == pod["index"]
            assert group.master_addr == first
            assert env["ONESEEK_JOB_NAME"] == f"{name}-{replicated['name']}-0"
            assert env["ONESEEK_JOB_NAME"] in patchable
        # Every node of one group trains one and the same model.
        assert len(models_of_group) == 1
        trained.extend(models_of_group)
    # Each group a distinct model, in the order of baseModels.
    assert trained == MODELS


def test_group_pods_are_the_single_pod_template_plus_the_group(loaded: chart.Chart) -> None:
    """Security context, volumes, resources, tolerations, affinity: the Job's pod, unchanged."""
    values = {
        "gpu": {"count": 4, "product": {"values": ["NVIDIA-H100-80GB-HBM3"]}},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "metrics": {"enabled": True},
    }
    (job,) = kinds(render(loaded, {"baseModels": MODELS, **values}), "Job")
    jobset, _ = only_jobset(loaded, {"nodesPerModel": 2, **values})
    single = job["spec"]["template"]
    for replicated in jobset["spec"]["replicatedJobs"]:
        template = copy.deepcopy(replicated["template"]["spec"]["template"])
        container = template["spec"]["containers"][0]
        env = env_of(container)
        assert env["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == (
            f"metadata.annotations['{COMPLETION_INDEX}']"
        )
        assert env["PET_NPROC_PER_NODE"]["value"] == "4"
        # Named after the workload: the JobSet's own ConfigMap and child Job.
        ref = env["BASE_MODELS"]["valueFrom"]["configMapKeyRef"]["name"]
        assert ref == jobset["metadata"]["name"]
        named = {"BASE_MODELS", "ONESEEK_JOB_NAME"}
        container["env"] = [e for e in container["env"] if e["name"] not in GROUP_ENV | named]
        expected = copy.deepcopy(single)
        expected_container = expected["spec"]["containers"][0]
        expected_container["env"] = [e for e in expected_container["env"] if e["name"] not in named]
        assert template == expected


def test_failure_mapping_and_queueing(loaded: chart.Chart) -> None:
    jobset, _ = only_jobset(
        loaded,
        {"nodesPerModel": 2, "jobSet": {"maxRestarts": 5}, "kueue": {"queueName": "gpu-queue"}},
    )
    policy = jobset["spec"]["failurePolicy"]
    assert policy["maxRestarts"] == 5
    # A child Job fails with reason PodFailurePolicy only through a FailJob rule: the
    # verdict exit codes. That fails the JobSet; anything else restarts the groups.
    (rule,) = policy["rules"]
    assert (rule["action"], rule["onJobFailureReasons"]) == ("FailJobSet", ["PodFailurePolicy"])
    for replicated in jobset["spec"]["replicatedJobs"]:
        spec = replicated["template"]["spec"]
        assert spec["backoffLimit"] == 0
        fail_job = {
            code
            for r in spec["podFailurePolicy"]["rules"]
            if r["action"] == "FailJob"
            for code in r["onExitCodes"]["values"]
        }
        assert fail_job == {2, 3, 4}
        assert "kueue.x-k8s.io/queue-name" not in (replicated["template"].get("metadata") or {})
    # The whole JobSet is one Kueue workload, admitted at once: no partial admission.
    assert jobset["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    annotations = jobset["metadata"].get("annotations") or {}
    assert not [k for k in annotations if k.startswith("kueue.x-k8s.io/")]
    assert "suspend" not in jobset["spec"]


def test_group_shape_names_the_jobset(loaded: chart.Chart) -> None:
    """Replicated jobs are immutable: another shape is another JobSet (with the same run,
    which resumes with the new number of processes). nodesPerModel=1 keeps today's Job name."""
    names = {
        nodes: only_jobset(loaded, {"nodesPerModel": nodes})[0]["metadata"]["name"]
        for nodes in (2, 4)
    }
    four_gpus = only_jobset(loaded, {"nodesPerModel": 2, "gpu": {"count": 4}})[0]
    assert len({names[2], names[4], four_gpus["metadata"]["name"]}) == 3
    plain = kinds(render(loaded, {"baseModels": MODELS}), "Job")[0]
    single = kinds(render(loaded, {"baseModels": MODELS, "nodesPerModel": 1}), "Job")[0]
    assert plain == single


def test_longest_names_stay_dns_labels(loaded: chart.Chart) -> None:
    many = [f"model-{i}" for i in range(64)]
    docs = render(
        loaded,
        {"baseModels": many, "nodesPerModel": 64, "fullnameOverride": "x" * 63},
        release="r" * 53,
    )
    (jobset,) = kinds(docs, "JobSet")
    crd_validate_strict(jobset)
    last = jobset["spec"]["replicatedJobs"][-1]
    hostname = running_pods(jobset, last)[-1]["hostname"]
    assert DNS_LABEL.match(hostname) and len(hostname) <= 63, hostname


@pytest.mark.parametrize(
    ("values", "why"),
    [
        ({"mode": "sequential"}, "nodesPerModel > 1 needs mode=indexed"),
        ({"job": {"parallelism": 1}}, "job.parallelism does not apply"),
        (
            {
                "checkpoints": {
                    "existingClaim": "",
                    "storageClassName": "gp3",
                    "accessModes": ["ReadWriteOnce"],
                }
            },
            "ReadWriteOnce checkpoints volume cannot be shared",
        ),
    ],
)
def test_group_refusals(loaded: chart.Chart, values: dict[str, Any], why: str) -> None:
    with pytest.raises(HelmRenderError) as info:
        render(loaded, {"nodesPerModel": 2, **values})
    assert why in str(info.value), str(info.value)
    # With one node per model (and one pod at a time) they render: the refusal is the group's.
    render(loaded, {"nodesPerModel": 1, **values, "job": {"parallelism": 1}})


def test_trainjob_example_runs_the_same_image(loaded: chart.Chart) -> None:
    """docs/examples/trainjob.yaml: what a Kubeflow Trainer user applies instead."""
    (trainjob,) = [d for d in yaml.safe_load_all(TRAINJOB.read_text()) if d]
    parsed = TrainerV1alpha1TrainJob.from_dict(trainjob)
    assert parsed is not None and parsed.to_dict() == trainjob, "unknown fields"
    assert (trainjob["apiVersion"], trainjob["kind"]) == (
        "trainer.kubeflow.org/v1alpha1",
        "TrainJob",
    )
    trainer = trainjob["spec"]["trainer"]
    image = loaded.values["image"]["repository"]
    assert trainer["image"].split(":")[0] == image
    assert trainer["args"][0] == "train"
    env = {e["name"]: e for e in trainer["env"]}
    # The trainer runs one TrainJob per model: the model index is set, the node rank is
    # the runtime's (PET_NODE_RANK), and the model count guards the list.
    index = int(env["ONESEEK_MODEL_INDEX"]["value"])
    models = env["BASE_MODELS"]["value"].split(",")
    assert 0 <= index < len(models) == int(env["ONESEEK_MODEL_COUNT"]["value"])
    assert not GROUP_ENV - {"ONESEEK_MODEL_INDEX"} & set(env), "the runtime sets PET_*"
    gpus = trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"]
    assert trainer["numProcPerNode"] == gpus == int(env["ONESEEK_GPU_COUNT"]["value"])
    for key, value in {k: v["value"] for k, v in env.items() if "value" in v}.items():
        assert isinstance(value, str), key
    settings = load_settings_from(env)
    assert settings.model_selector == ("ONESEEK_MODEL_INDEX", index)


def load_settings_from(env: dict[str, dict[str, Any]]) -> Any:
    with pytest.MonkeyPatch.context() as patch:
        for key, var in env.items():
            if "value" in var:
                patch.setenv(key, var["value"])
        return load_settings()


@pytest.mark.parametrize("nodes", [2, 4])
def test_lint_strict_and_notes_name_the_jobset(loaded: chart.Chart, nodes: int) -> None:
    values = {"baseModels": MODELS, "nodesPerModel": nodes}
    report = chart.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
    jobset, docs = only_jobset(loaded, {"nodesPerModel": nodes})
    manifests = loaded.render(values, name=RELEASE, namespace=NAMESPACE)
    (notes,) = [text for path, text in manifests.items() if path.endswith("NOTES.txt")]
    name = jobset["metadata"]["name"]
    assert f"get jobset {name} " in notes
    # The commands name Jobs that exist: the JobSet's children, which the pods annotate.
    (role,) = kinds(docs, "Role")
    patchable = next(r for r in role["rules"] if r["resources"] == ["jobs"])["resourceNames"]
    named = set(re.findall(rf"\b({re.escape(name)}-m\d+-0)\b", notes))
    assert named and named <= set(patchable)
    assert f"job-name={name}" not in notes, "no Job of that name exists"
