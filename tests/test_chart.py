"""The Helm chart, rendered in-process by Helm v4 (helm-python-sdk), for every ci/ scenario.

Each scenario is linted strictly, every rendered object is validated against the newest
Kubernetes schema with unknown fields rejected, and the pods are checked against the
restricted Pod Security Standard. The Job's shape (indices, failure policy, GPU, volumes),
the config-hash naming and the schema's refusals are checked on top.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_python import chart
from helm_python.errors import HelmRenderError, HelmValuesError

from oneseek_job.config import RUN_ID_PATTERN, JobSettings, LoraSettings, TrainSettings
from oneseek_job.discovery import MAX_BASE_MODELS, normalize_model_name
from oneseek_job.errors import EXIT_JOB_SHAPE
from oneseek_job.kube import KubeContext
from tests._k8s import load_docs, pod_spec, restricted_violations, validate_strict

ROOT = Path(__file__).resolve().parents[1]
CHART_DIR = ROOT / "helm" / "oneseek-job"
SCENARIOS = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
RELEASE, NAMESPACE = "oneseek", "oneseek-prod"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@pytest.fixture(scope="module")
def loaded() -> Iterator[chart.Chart]:
    with chart.Chart.load(CHART_DIR) as loaded_chart:
        yield loaded_chart


def scenario_values(path: Path) -> dict[str, Any]:
    values = yaml.safe_load(path.read_text()) or {}
    assert isinstance(values, dict)
    return values


def render(
    loaded: chart.Chart, values: dict[str, Any], release: str = RELEASE
) -> list[dict[str, Any]]:
    manifests = loaded.render(values, name=release, namespace=NAMESPACE)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(load_docs(text))
    return docs


def merged(loaded: chart.Chart, values: dict[str, Any]) -> dict[str, Any]:
    return loaded.merge_values(values)


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and not is_test_hook(d)]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def is_test_hook(doc: dict[str, Any]) -> bool:
    """A helm test hook or an Argo CD PostSync hook: verification, not the training run."""
    annotations = doc["metadata"].get("annotations") or {}
    return (
        annotations.get("helm.sh/hook") == "test"
        or annotations.get("argocd.argoproj.io/hook") == "PostSync"
    )


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_scenarios_exist() -> None:
    names = {p.name.removesuffix("-values.yaml") for p in SCENARIOS}
    assert {
        "default",
        "one-model",
        "five-models",
        "sequential",
        "existing-claim",
        "no-gpu",
        "created-claims",
        "gke",
        "eks",
        "aks",
        "karpenter",
        "argocd",
    } <= names


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_lint_strict(scenario: Path) -> None:
    report = chart.lint(CHART_DIR, scenario_values(scenario), strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    # Severity 2 = warning, 3 = error; strict lint treats warnings as failures too.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_every_object_validates_strictly(loaded: chart.Chart, scenario: Path) -> None:
    docs = render(loaded, scenario_values(scenario))
    assert docs
    for doc in docs:
        validate_strict(doc)
        assert doc["metadata"]["namespace"] == NAMESPACE
        assert len(doc["metadata"]["name"]) <= 63
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "oneseek-job"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["helm.sh/chart"].startswith("oneseek-job-")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_pods_are_restricted_pss(loaded: chart.Chart, scenario: Path) -> None:
    docs = render(loaded, scenario_values(scenario))
    specs = [s for s in (pod_spec(d) for d in docs) if s is not None]
    # The training Job, the helm test pod and, with argocd.postSyncVerify, the verify Job.
    assert len(specs) == 2 + bool(
        merged(loaded, scenario_values(scenario))["argocd"]["postSyncVerify"]
    )
    for spec in specs:
        assert restricted_violations(spec) == []


def test_pss_checker_catches_violations(loaded: chart.Chart) -> None:
    spec = pod_spec(only(render(loaded, {}), "Job"))
    assert spec is not None
    bad = copy.deepcopy(spec)
    bad["hostNetwork"] = True
    bad["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    container = bad["containers"][0]
    container["securityContext"]["allowPrivilegeEscalation"] = True
    container["securityContext"]["capabilities"] = {"drop": ["NET_RAW"], "add": ["SYS_ADMIN"]}
    container["securityContext"]["readOnlyRootFilesystem"] = False
    del bad["securityContext"]["seccompProfile"]
    del bad["securityContext"]["runAsNonRoot"]
    del container["securityContext"]["runAsNonRoot"]
    problems = restricted_violations(bad)
    for expected in (
        "hostNetwork",
        "hostPath",
        "allowPrivilegeEscalation",
        "drop ALL",
        "SYS_ADMIN",
        "runAsNonRoot",
        "seccompProfile",
        "readOnlyRootFilesystem",
    ):
        assert any(expected in p for p in problems), (expected, problems)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_job_indices_match_models(loaded: chart.Chart, scenario: Path) -> None:
    values = scenario_values(scenario)
    full = merged(loaded, values)
    models = full["baseModels"]
    job = only(render(loaded, values), "Job")
    spec = job["spec"]
    rules = spec["podFailurePolicy"]["rules"]
    # The job's own verdicts first: a pod exiting 2/3/4 while disrupted still fails.
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "train", "operator": "In", "values": [EXIT_JOB_SHAPE]},
    }
    assert rules[1]["onExitCodes"]["values"] == [2, 3]
    assert rules[2] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert rules[3]["onExitCodes"]["values"] == [75]
    assert rules[3]["action"] == "Count"
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    if full["mode"] == "indexed":
        assert spec["completionMode"] == "Indexed"
        assert spec["completions"] == len(models)
        wanted = full["job"]["parallelism"] or len(models)
        assert spec["parallelism"] == min(wanted, len(models))
        assert spec["backoffLimitPerIndex"] == full["job"]["backoffLimitPerIndex"]
        assert "backoffLimit" not in spec
        assert rules[1]["action"] == "FailIndex"
    else:
        assert spec["completionMode"] == "NonIndexed"
        assert spec["completions"] == spec["parallelism"] == 1
        assert spec["backoffLimit"] == full["job"]["backoffLimit"]
        assert "backoffLimitPerIndex" not in spec
        assert rules[1]["action"] == "FailJob"
    configmap = only(
        [d for d in render(loaded, values) if d["metadata"]["name"] == job["metadata"]["name"]],
        "ConfigMap",
    )
    assert configmap["data"]["BASE_MODELS"].split(",") == models
    assert configmap["immutable"] is True
    container = spec["template"]["spec"]["containers"][0]
    assert env_of(container)["BASE_MODELS"]["valueFrom"]["configMapKeyRef"] == {
        "name": configmap["metadata"]["name"],
        "key": "BASE_MODELS",
    }
    assert spec["activeDeadlineSeconds"] == full["job"]["activeDeadlineSeconds"]
    # The count the Job was rendered for travels with the pods, which check it.
    assert env_of(container)["ONESEEK_MODEL_COUNT"]["value"] == str(len(models))


def test_demo_three_models_give_three_indices(loaded: chart.Chart) -> None:
    job = only(render(loaded, {}), "Job")
    assert (job["spec"]["completionMode"], job["spec"]["completions"]) == ("Indexed", 3)
    validate_strict(job)


@pytest.mark.parametrize("count", [1, 2, 7, 12])
def test_indices_follow_model_count(loaded: chart.Chart, count: int) -> None:
    models = [f"model-{i}" for i in range(count)]
    job = only(render(loaded, {"baseModels": models, "job": {"parallelism": 4}}), "Job")
    assert job["spec"]["completions"] == count
    assert job["spec"]["parallelism"] == min(4, count)


def test_gpu_scheduling_and_its_absence(loaded: chart.Chart) -> None:
    with_gpu = only(render(loaded, {}), "Job")["spec"]["template"]["spec"]
    limits = with_gpu["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1
    # No default nodeSelector: GPU feature discovery labels are absent on autoscaler node
    # templates, so a selector on them would keep pods Pending and never scale from zero.
    assert "nodeSelector" not in with_gpu
    assert "affinity" not in with_gpu
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        with_gpu["tolerations"]
    )
    # AKS GPU pools are tainted sku=gpu:NoSchedule.
    assert {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in (
        with_gpu["tolerations"]
    )
    assert env_of(with_gpu["containers"][0])["ONESEEK_GPU_COUNT"]["value"] == "1"

    no_gpu_values = scenario_values(CHART_DIR / "ci" / "no-gpu-values.yaml")
    no_gpu = only(render(loaded, no_gpu_values), "Job")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in no_gpu["containers"][0]["resources"].get("limits", {})
    assert "nodeSelector" not in no_gpu
    assert "tolerations" not in no_gpu
    names = {v["name"]: v for v in no_gpu["volumes"]}
    assert "emptyDir" in names["checkpoints"]
    assert "signing-key" not in names
    assert "ONESEEK_SIGNING_KEY_FILE" not in env_of(no_gpu["containers"][0])
    assert "ONESEEK_GPU_COUNT" not in env_of(no_gpu["containers"][0])

    full = scenario_values(CHART_DIR / "ci" / "full-values.yaml")
    spec = only(render(loaded, full), "Job")["spec"]["template"]["spec"]
    # User selectors and tolerations come on top of the GPU ones.
    assert spec["nodeSelector"] == {"node.kubernetes.io/instance-type": "p5.48xlarge"}
    assert [t["key"] for t in spec["tolerations"]] == ["nvidia.com/gpu", "sku", "dedicated"]
    # The GPU product is ANDed into the user's required node affinity term.
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [
        {
            "matchExpressions": [
                {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["eu-north-1a"]},
                {
                    "key": "nvidia.com/gpu.product",
                    "operator": "In",
                    "values": ["NVIDIA-H100-80GB-HBM3"],
                },
            ]
        }
    ]


@pytest.mark.parametrize(
    ("provider", "selector"),
    [
        ("gke", {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}),
        ("eks", {"node.kubernetes.io/instance-type": "p5.48xlarge"}),
        ("aks", {"kubernetes.azure.com/agentpool": "gpunp"}),
        ("karpenter", {"karpenter.sh/nodepool": "gpu"}),
    ],
)
def test_provider_examples(loaded: chart.Chart, provider: str, selector: dict[str, str]) -> None:
    values = scenario_values(CHART_DIR / "ci" / f"{provider}-values.yaml")
    docs = render(loaded, values)
    spec = only(docs, "Job")["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == selector
    assert "sku" in {t["key"] for t in spec["tolerations"]}
    claim = only(docs, "PersistentVolumeClaim")["spec"]
    assert claim["storageClassName"] and claim["accessModes"]
    if provider == "karpenter":
        expression = spec["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"][0]["matchExpressions"][0]
        assert expression == {
            "key": "karpenter.k8s.aws/instance-gpu-name",
            "operator": "In",
            "values": ["h100", "a100"],
        }
        # ReadWriteOnce checkpoints: one pod at a time.
        assert claim["accessModes"] == ["ReadWriteOnce"]
        assert only(docs, "Job")["spec"]["parallelism"] == 1


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_requests_equal_limits(loaded: chart.Chart, scenario: Path) -> None:
    """Guaranteed QoS: a Burstable pod is evicted first under node pressure."""
    job = only(render(loaded, scenario_values(scenario)), "Job")
    resources = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    for name in ("cpu", "memory"):
        assert resources["limits"][name] == resources["requests"][name], name


def test_volumes_and_mounts(loaded: chart.Chart) -> None:
    docs = render(loaded, {})
    spec = only(docs, "Job")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    assert volumes["models"]["persistentVolumeClaim"]["readOnly"] is True
    # By default both claims exist outside the release: no empty models volume, no
    # ReadWriteMany claim from a default StorageClass that cannot serve it.
    assert [d for d in docs if d["kind"] == "PersistentVolumeClaim"] == []
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "oneseek-models"
    assert volumes["checkpoints"]["persistentVolumeClaim"]["claimName"] == "oneseek-checkpoints"
    created = render(loaded, scenario_values(CHART_DIR / "ci" / "created-claims-values.yaml"))
    claims = {d["metadata"]["name"]: d for d in created if d["kind"] == "PersistentVolumeClaim"}
    assert set(claims) == {"oneseek-oneseek-job-models", "oneseek-oneseek-job-checkpoints"}
    for claim in claims.values():
        assert claim["spec"]["storageClassName"] == "nfs-client"
        # Data outlives the release (helm uninstall, Argo CD app deletion).
        assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claims["oneseek-oneseek-job-models"]["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert mounts["/dev/shm"]["name"] == "dshm"
    for path in ("/tmp", "/cache", "/work"):
        assert "emptyDir" in volumes[mounts[path]["name"]]
    assert volumes["signing-key"]["secret"]["secretName"] == "oneseek-job-signing-key"
    # A missing Secret must not keep the pod from starting: pre-flight names it (exit 2).
    assert volumes["signing-key"]["secret"]["optional"] is True
    env = env_of(container)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert env["ONESEEK_CREDENTIALS_SECRET"]["value"] == "oneseek-job-s3"
    key_file = Path(env["ONESEEK_SIGNING_KEY_FILE"]["value"])
    assert mounts[str(key_file.parent)]["name"] == "signing-key"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "oneseek-job-s3"
    assert env["CHECKPOINT_DIR"]["value"] == "/checkpoints"
    assert env["ONESEEK_WORK_DIR"]["value"] == "/work"


def test_existing_claims_are_used_not_created(loaded: chart.Chart) -> None:
    values = scenario_values(CHART_DIR / "ci" / "existing-claim-values.yaml")
    docs = render(loaded, values)
    assert [d for d in docs if d["kind"] == "PersistentVolumeClaim"] == []
    spec = only(docs, "Job")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {
        "claimName": "admin-models",
        "readOnly": True,
    }
    assert volumes["checkpoints"]["persistentVolumeClaim"]["claimName"] == "training-checkpoints"
    container = spec["containers"][0]
    models_mount = next(m for m in container["volumeMounts"] if m["name"] == "models")
    assert models_mount == {
        "name": "models",
        "mountPath": "/models",
        "readOnly": True,
        "subPath": "oneseek",
    }
    env = env_of(container)
    assert "AWS_ACCESS_KEY_ID" not in env  # workload identity instead of a Secret
    assert env["S3_ENDPOINT_URL"]["value"] == "https://minio.storage.svc:9000"
    assert env["AWS_REGION"]["value"] == "eu-north-1"


def _job_identity(loaded: chart.Chart, values: dict[str, Any]) -> tuple[str, str]:
    job = only(render(loaded, values), "Job")
    env = env_of(job["spec"]["template"]["spec"]["containers"][0])
    return job["metadata"]["name"], env["RUN_ID"]["value"]


def test_job_identity_follows_training_inputs_only(loaded: chart.Chart) -> None:
    base = {"baseModels": ["KB-Llama-3.1-8B-Swedish", "Mistral-7B-Instruct"]}
    name, run_id = _job_identity(loaded, base)
    assert RUN_ID_PATTERN.fullmatch(run_id)
    assert DNS_LABEL.fullmatch(name) and len(name) <= 52
    # The Job name carries the run hash: one run, one Job.
    assert name.endswith(
        "-" + only(render(loaded, base), "Job")["metadata"]["annotations"]["oneseek.ai/job-hash"]
    )

    # Same values, same names: an unchanged upgrade or sync is a no-op.
    assert _job_identity(loaded, copy.deepcopy(base)) == (name, run_id)
    # What is trained changes: new Job and new run.
    for change in (
        {"baseModels": ["KB-Llama-3.1-8B-Swedish"]},
        {"baseModels": [*base["baseModels"], "llama-2-7b"]},  # a model added: carry-over's case
        {"baseModels": list(reversed(base["baseModels"]))},  # index i trains entry i
        {"dataset": "/models/datasets/other"},
        {"training": {"learningRate": 0.001}},
        {"training": {"lora": {"r": 8}}},
        {"modelVersion": "2.0"},
        {"image": {"tag": "0.2.0"}},
        {"image": {"digest": "sha256:" + "a" * 64}},
        {"runNonce": "again"},
    ):
        other_name, other_run = _job_identity(loaded, {**base, **change})
        assert other_name != name and other_run != run_id, change
    # Everything else leaves the Job's identity alone: a mutable field is patched in place,
    # an immutable one is refused by the API server instead of starting a second pod that
    # trains the same run next to the terminating one.
    for change in (
        {"priorityClassName": "batch-high"},
        {"resources": {"requests": {"cpu": "16", "memory": "128Gi"}}},
        {"tolerations": [{"key": "dedicated", "operator": "Exists"}]},
        {"job": {"ttlSecondsAfterFinished": 60, "parallelism": 1}},
        {"job": {"activeDeadlineSeconds": 3600, "annotations": {"team": "ml"}}},
        {"gpu": {"nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-l4"}}},
        {"test": {"enabled": False}},
        {"argocd": {"postSyncVerify": True}},
    ):
        assert _job_identity(loaded, {**base, **change}) == (name, run_id), change
    # completionMode cannot change on a Job: new Job, same run.
    seq_name, seq_run = _job_identity(loaded, {**base, "mode": "sequential"})
    assert seq_name != name and seq_run == run_id
    # A fixed runId wins.
    assert _job_identity(loaded, {**base, "runId": "run-20250101-120000"})[1] == (
        "run-20250101-120000"
    )
    # Another release gets its own run even with equal values.
    other_release = only(render(loaded, base, release="staging"), "Job")
    other_env = env_of(other_release["spec"]["template"]["spec"]["containers"][0])
    assert other_env["RUN_ID"]["value"] != run_id


def test_long_names_are_truncated(loaded: chart.Chart) -> None:
    values = scenario_values(CHART_DIR / "ci" / "full-values.yaml")
    docs = render(loaded, values)
    job = only(docs, "Job")
    name = job["metadata"]["name"]
    # Pod hostnames of an Indexed Job are "<job>-<index>": keep room for the index.
    assert len(name) <= 52 and DNS_LABEL.fullmatch(name)
    for doc in docs:
        assert len(doc["metadata"]["name"]) <= 63
        assert DNS_LABEL.fullmatch(doc["metadata"]["name"]) or doc["kind"] in {"ConfigMap"}


def test_rbac_is_least_privilege(loaded: chart.Chart) -> None:
    docs = render(loaded, {})
    role = only(docs, "Role")
    job_name = only(docs, "Job")["metadata"]["name"]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        {
            "apiGroups": ["batch"],
            "resources": ["jobs"],
            "resourceNames": [job_name],
            "verbs": ["patch"],
        },
        # kube.pod_image_digest: its own pod's status (names are random: no resourceNames).
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
    ]
    binding = only(docs, "RoleBinding")
    account = only(docs, "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]
    assert (
        only(docs, "Job")["spec"]["template"]["spec"]["serviceAccountName"]
        == (account["metadata"]["name"])
    )
    full = render(loaded, scenario_values(CHART_DIR / "ci" / "sequential-values.yaml"))
    rules = only(full, "Role")["rules"]
    assert rules[-1] == {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": ["admin-models"],
        "verbs": ["get"],
    }
    no_rbac = render(loaded, {"rbac": {"create": False}})
    assert not [d for d in no_rbac if d["kind"] in {"Role", "RoleBinding"}]


def test_env_names_are_the_cli_contract(loaded: chart.Chart) -> None:
    """Every env var the chart sets is one config.py or kube.py reads (no silent typos)."""
    known: set[str] = set()
    for model in (JobSettings, LoraSettings, TrainSettings):
        for info in model.model_fields.values():
            alias = info.validation_alias
            for choice in getattr(alias, "choices", []):
                if isinstance(choice, str) and choice.isupper():
                    known.add(choice)
    kube_env = {
        "ONESEEK_NAMESPACE",
        "ONESEEK_JOB_NAME",
        "ONESEEK_JOB_UID",
        "ONESEEK_POD_NAME",
    }
    assert {"ONESEEK_MODEL_COUNT", "ONESEEK_GPU_COUNT", "ONESEEK_CREDENTIALS_SECRET"} <= known
    known |= kube_env
    full = render(loaded, scenario_values(CHART_DIR / "ci" / "full-values.yaml"))
    container = only(full, "Job")["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    assert set(env) <= known, sorted(set(env) - known)
    assert kube_env <= set(env)
    assert env["ONESEEK_LORA_TARGET_MODULES"]["value"] == "q_proj,v_proj"
    assert env["ONESEEK_LEARNING_RATE"]["value"] == "0.0001"
    assert env["ONESEEK_MAX_STEPS"]["value"] == "0"
    assert env["ONESEEK_GRADIENT_CHECKPOINTING"]["value"] == "true"
    assert env["ONESEEK_IMAGE_DIGEST"]["value"].startswith("sha256:")
    assert container["image"].endswith("@" + env["ONESEEK_IMAGE_DIGEST"]["value"])
    assert container["args"] == ["train", "--allow-regression"]
    # kube.py builds its context from exactly these variables.
    literal = {k: v["value"] for k, v in env.items() if "value" in v}
    ctx = KubeContext.from_environment(
        {**literal, "ONESEEK_NAMESPACE": NAMESPACE, "ONESEEK_JOB_UID": "uid-1"}
    )
    assert ctx.job_name == only(full, "Job")["metadata"]["name"]
    # Defaults: null hyper-parameters are left to the CLI.
    default_env = env_of(
        only(render(loaded, {}), "Job")["spec"]["template"]["spec"]["containers"][0]
    )
    assert not [name for name in default_env if name.startswith("ONESEEK_LORA")]


def _verify_pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The pod specs that run `verify`: the helm test pod and the Argo CD PostSync Job."""
    found: dict[str, dict[str, Any]] = {}
    for doc in docs:
        annotations = doc["metadata"].get("annotations") or {}
        if annotations.get("helm.sh/hook") == "test" and doc["kind"] == "Pod":
            found["helm-test"] = doc["spec"]
        elif annotations.get("argocd.argoproj.io/hook") == "PostSync":
            assert doc["kind"] == "Job"
            assert annotations["argocd.argoproj.io/hook-delete-policy"] == "BeforeHookCreation"
            found["post-sync"] = doc["spec"]["template"]["spec"]
    return found


def test_verify_pods_check_this_release_run(loaded: chart.Chart) -> None:
    values = scenario_values(CHART_DIR / "ci" / "full-values.yaml")
    docs = render(loaded, values)
    job_spec = only(docs, "Job")["spec"]["template"]["spec"]
    job_env = env_of(job_spec["containers"][0])
    key_map = next(d for d in docs if d["metadata"]["name"].endswith("-verify-key"))
    pods = _verify_pods(docs)
    assert set(pods) == {"helm-test", "post-sync"}
    for spec in pods.values():
        # The job's ServiceAccount: the S3 access of IRSA / workload identity comes with it.
        assert spec["serviceAccountName"] == job_spec["serviceAccountName"]
        container = spec["containers"][0]
        assert container["args"] == [
            "verify",
            job_env["ARTIFACTS_URI"]["value"],
            "--run-id",
            job_env["RUN_ID"]["value"],
            "--public-key",
            "/etc/oneseek/verify/public-key.pem",
        ]
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["verify-key"]["configMap"]["name"] == key_map["metadata"]["name"]
        assert "resources" in container and "nvidia.com/gpu" not in str(container["resources"])
    assert "BEGIN PUBLIC KEY" in key_map["data"]["public-key.pem"]
    assert not _verify_pods(render(loaded, {"test": {"enabled": False}}))


def test_verify_accepts_unsigned_only_when_signing_is_off(loaded: chart.Chart) -> None:
    unsigned = _verify_pods(
        render(loaded, scenario_values(CHART_DIR / "ci" / "argocd-values.yaml"))
    )
    assert set(unsigned) == {"helm-test", "post-sync"}
    for spec in unsigned.values():
        assert spec["containers"][0]["args"][-1] == "--allow-unsigned"
    signed = _verify_pods(render(loaded, {}))["helm-test"]
    assert "--allow-unsigned" not in signed["containers"][0]["args"]


def test_argocd_defaults_do_not_fight_self_heal(loaded: chart.Chart) -> None:
    plain = only(render(loaded, {}), "Job")
    # No TTL: a TTL-deleted Job shows OutOfSync and selfHeal would start it again.
    assert "ttlSecondsAfterFinished" not in plain["spec"]
    # No Sync hook: it would hold every later sync for the hours training takes.
    assert not [k for k in plain["metadata"]["annotations"] if k.startswith("argocd.argoproj.io")]
    assert "post-sync" not in _verify_pods(render(loaded, {}))
    hooked = only(render(loaded, {"argocd": {"syncHook": True}}), "Job")
    assert hooked["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "Sync"
    assert (
        hooked["metadata"]["annotations"]["argocd.argoproj.io/hook-delete-policy"]
        == "BeforeHookCreation"
    )
    timed = only(render(loaded, {"job": {"ttlSecondsAfterFinished": 600}}), "Job")
    assert timed["spec"]["ttlSecondsAfterFinished"] == 600


def test_notes_tell_how_to_follow_the_run(loaded: chart.Chart) -> None:
    manifests = loaded.render({}, name=RELEASE, namespace=NAMESPACE)
    notes = next(v for k, v in manifests.items() if k.endswith("NOTES.txt"))
    job = only(render(loaded, {}), "Job")
    name = job["metadata"]["name"]
    run_id = env_of(job["spec"]["template"]["spec"]["containers"][0])["RUN_ID"]["value"]
    assert f"kubectl -n {NAMESPACE} logs -f -l batch.kubernetes.io/job-name={name}" in notes
    assert f"kubectl -n {NAMESPACE} describe job {name}" in notes
    assert f"s3://oneseek-artifacts/oneseek/oneseek-certified/{run_id}/" in notes
    assert f"helm test {RELEASE} -n {NAMESPACE}" in notes
    for index, model in enumerate(merged(loaded, {})["baseModels"]):
        assert f"index {index}: {model}" in notes
    # The claims the chart does not create are named as prerequisites.
    assert "Needs PVC oneseek-models" in notes
    assert "Needs PVC oneseek-checkpoints for the checkpoints, ReadWriteMany" in notes


@pytest.mark.parametrize(
    ("values", "where", "why"),
    [
        ({"baseModels": []}, "/baseModels", "minItems"),
        ({"baseModels": "a,b"}, "/baseModels", "want array"),
        ({"baseModels": ["a,b"]}, "/baseModels/0", "does not match pattern"),
        ({"baseModels": ["a", "a"]}, "/baseModels", "are equal"),
        ({"baseModels": [3]}, "/baseModels/0", "want string"),
        ({"bogus": 1}, "''", "additional properties 'bogus' not allowed"),
        ({"image": {"sha": "x"}}, "/image", "additional properties 'sha' not allowed"),
        ({"training": {"lr": 0.1}}, "/training", "additional properties 'lr' not allowed"),
        ({"mode": "parallel"}, "/mode", "value must be one of"),
        ({"securityContext": {"allowPrivilegeEscalation": True}}, "/securityContext", "false"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext", "true"),
        ({"image": {"digest": "latest"}}, "/image/digest", "does not match pattern"),
        ({"training": {"lora": {"r": 0}}}, "/training/lora/r", "minimum"),
        ({"runId": "bad run id"}, "/runId", "does not match pattern"),
        ({"models": {"existingClaim": "Bad_Claim"}}, "/models/existingClaim", "pattern"),
        ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory", "pattern"),
        ({"baseModels": [f"m{i}" for i in range(65)]}, "/baseModels", "maxItems"),
        ({"gpu": {"product": {"values": [""]}}}, "/gpu/product/values/0", "minLength"),
    ],
)
def test_schema_rejects_bad_values(
    loaded: chart.Chart, values: dict[str, Any], where: str, why: str
) -> None:
    with pytest.raises(HelmValuesError) as info:
        loaded.render(values, name=RELEASE, namespace=NAMESPACE)
    message = str(info.value)
    assert f"at {where}" in message or f"at '{where}" in message, message
    assert why in message, message


def test_schema_is_closed_everywhere() -> None:
    import json

    schema = json.loads((CHART_DIR / "values.schema.json").read_text())

    # Maps of strings (labels, selectors) and quantity maps are open by nature; every
    # object with declared properties must be closed.
    def walk(node: Any, path: str) -> Iterator[str]:
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                yield path
            if node.get("type") == "object" or "properties" in node:
                assert "description" in node or "$ref" in node, f"{path} has no description"
            for key, child in node.items():
                yield from walk(child, f"{path}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                yield from walk(child, f"{path}/{i}")

    assert list(walk(schema, "")) == []
    for name, prop in schema["properties"].items():
        assert "description" in prop or "$ref" in prop, name


def test_every_value_is_commented() -> None:
    """STYLE.md 14: every key in values.yaml is commented, itself or through its parent.

    A key counts as documented when a comment sits right above it, or above the mapping
    it belongs to (``image:`` explained once, or ``resources:`` whose children are the
    documented default), or right below it (a group heading commented on its first child).
    """
    text = (CHART_DIR / "values.yaml").read_text()
    assert _undocumented(text) == []
    # The check can fail: a new key without a comment is reported.
    end = len(text.splitlines())
    assert _undocumented(text + "\nsneaky:\n  key: 1\n") == [
        f"line {end + 2}: sneaky",
        f"line {end + 3}: key",
    ]


def _undocumented(text: str) -> list[str]:
    lines = text.splitlines()
    key_line = re.compile(r"^(\s*)(- )?([A-Za-z][A-Za-z0-9.\-/]*):")
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    missing = []
    for i, line in enumerate(lines):
        match = key_line.match(line)
        if not match:
            continue
        indent = len(match.group(1)) + (2 if match.group(2) else 0)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        above = lines[i - 1].strip() if i else ""
        below = lines[i + 1].strip() if i + 1 < len(lines) else ""
        documented = above.startswith("#") or below.startswith("#") or any(doc for _, doc in stack)
        if not documented:
            missing.append(f"line {i + 1}: {match.group(3)}")
        stack.append((indent, documented))
    return missing


def test_defaults_render_every_schema_key(loaded: chart.Chart) -> None:
    import json

    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    defaults = loaded.values
    assert set(defaults) == set(schema["properties"]), set(defaults) ^ set(schema["properties"])


def test_schema_and_code_agree_on_the_model_maximum(loaded: chart.Chart) -> None:
    import json

    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert schema["properties"]["baseModels"]["maxItems"] == MAX_BASE_MODELS
    most = [f"model-{i}" for i in range(MAX_BASE_MODELS)]
    assert only(render(loaded, {"baseModels": most}), "Job")["spec"]["completions"] == 64


@pytest.mark.parametrize(
    ("names", "key"),
    [
        (["Qwen-2.5-7B", "qwen_2_5_7b"], "qwen-2-5-7b"),
        (["KB-Llama-3.1-8B-Swedish", "kb llama 3.1 8b swedish"], "kb-llama-3-1-8b-swedish"),
        (["gemma_2_9b", "x", "-Gemma.2.9B-"], "gemma-2-9b"),
    ],
)
def test_aliases_of_one_model_are_refused_at_render(
    loaded: chart.Chart, names: list[str], key: str
) -> None:
    # The template's normalization is discovery's: same key for both spellings.
    assert len({normalize_model_name(n) for n in names if n != "x"}) == 1
    assert normalize_model_name(names[0]) == key
    with pytest.raises(HelmRenderError, match=f'name the same model "{key}"'):
        render(loaded, {"baseModels": names})


@pytest.mark.parametrize(
    ("values", "why"),
    [
        # A created claim needs its class and access modes spelled out (no RWX default).
        ({"models": {"existingClaim": ""}}, "models.storageClassName and models.accessModes"),
        (
            {"checkpoints": {"existingClaim": "", "storageClassName": "gp3"}},
            "checkpoints.storageClassName and checkpoints.accessModes",
        ),
        # ReadWriteOnce cannot be shared by parallel pods on several nodes.
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
        # A live ConfigMap read by each pod of an Indexed Job could differ between pods.
        ({"extraArgs": ["--configmap", "admin-models"]}, "--configmap is refused in indexed"),
        ({"extraArgs": ["--configmap=admin-models"]}, "--configmap is refused in indexed"),
        # Burstable QoS is refused.
        (
            {
                "resources": {
                    "requests": {"cpu": "4", "memory": "48Gi"},
                    "limits": {"memory": "64Gi"},
                }
            },
            "resources.limits.memory (64Gi) must equal resources.requests.memory (48Gi)",
        ),
        ({"resources": {"requests": {"cpu": None}}}, "resources.requests.cpu is required"),
    ],
)
def test_invalid_combinations_fail_the_render(
    loaded: chart.Chart, values: dict[str, Any], why: str
) -> None:
    with pytest.raises(HelmRenderError) as info:
        render(loaded, values)
    assert why in str(info.value), str(info.value)


def test_valid_neighbours_of_the_refusals_render(loaded: chart.Chart) -> None:
    """The refusals above are exact: their nearest valid values render."""
    rwo = {"existingClaim": "", "storageClassName": "gp3", "accessModes": ["ReadWriteOnce"]}
    for values in (
        {"checkpoints": rwo, "job": {"parallelism": 1}},
        {"checkpoints": rwo, "mode": "sequential"},
        {"checkpoints": {**rwo, "persistence": False}},
        {"mode": "sequential", "extraArgs": ["--configmap", "admin-models"]},
        {"extraArgs": ["--configmaps-are-not-this-flag"]},
        {"resources": {"requests": {"cpu": "4", "memory": "48Gi"}, "limits": {"cpu": 4}}},
        {"baseModels": ["llama-2-7b", "llama-2-7b-chat"]},
    ):
        validate_strict(only(render(loaded, values), "Job"))


def test_kueue_labels_queue_the_whole_job(loaded: chart.Chart) -> None:
    values = scenario_values(CHART_DIR / "ci" / "kueue-values.yaml")
    job = only(render(loaded, values), "Job")
    labels = job["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "oneseek"
    assert labels["kueue.x-k8s.io/priority-class"] == "oneseek-training"
    # All pods admitted together: no partial admission, and the chart leaves suspend to
    # Kueue's webhook (a Job suspended by us would wait forever where Kueue is absent).
    annotations = job["metadata"]["annotations"]
    assert not [k for k in annotations if k.startswith("kueue.x-k8s.io/")]
    assert "suspend" not in job["spec"]
    # Queueing is not a training input: same Job, same run as without Kueue.
    plain = only(render(loaded, {}), "Job")
    assert job["metadata"]["name"] == plain["metadata"]["name"]
    assert not [k for k in plain["metadata"]["labels"] if k.startswith("kueue.x-k8s.io/")]
