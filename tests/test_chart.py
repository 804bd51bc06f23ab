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
from helm_python.errors import HelmValuesError

from oneseek_job.config import RUN_ID_PATTERN, JobSettings, LoraSettings, TrainSettings
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
    return (doc["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"


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
    # The training Job plus the helm test pod.
    assert len(specs) == 2
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
    assert rules[0] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert rules[1]["onExitCodes"]["values"] == [2, 3]
    assert rules[2]["onExitCodes"]["values"] == [75]
    assert rules[2]["action"] == "Count"
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
    configmap = only(render(loaded, values), "ConfigMap")
    assert configmap["data"]["BASE_MODELS"].split(",") == models
    assert configmap["immutable"] is True
    container = spec["template"]["spec"]["containers"][0]
    assert env_of(container)["BASE_MODELS"]["valueFrom"]["configMapKeyRef"] == {
        "name": configmap["metadata"]["name"],
        "key": "BASE_MODELS",
    }
    assert spec["activeDeadlineSeconds"] == full["job"]["activeDeadlineSeconds"]


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
    assert with_gpu["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert any(t["key"] == "nvidia.com/gpu" for t in with_gpu["tolerations"])

    no_gpu_values = scenario_values(CHART_DIR / "ci" / "no-gpu-values.yaml")
    no_gpu = only(render(loaded, no_gpu_values), "Job")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in no_gpu["containers"][0]["resources"].get("limits", {})
    assert "nodeSelector" not in no_gpu
    assert "tolerations" not in no_gpu
    names = {v["name"]: v for v in no_gpu["volumes"]}
    assert "emptyDir" in names["checkpoints"]
    assert "signing-key" not in names
    assert "ONESEEK_SIGNING_KEY_FILE" not in env_of(no_gpu["containers"][0])

    full = scenario_values(CHART_DIR / "ci" / "full-values.yaml")
    spec = only(render(loaded, full), "Job")["spec"]["template"]["spec"]
    # User selectors and tolerations come on top of the GPU ones.
    assert spec["nodeSelector"] == {
        "nvidia.com/gpu.present": "true",
        "node.kubernetes.io/instance-type": "p5.48xlarge",
    }
    assert [t["key"] for t in spec["tolerations"]] == ["nvidia.com/gpu", "dedicated"]


def test_volumes_and_mounts(loaded: chart.Chart) -> None:
    docs = render(loaded, {})
    spec = only(docs, "Job")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    assert volumes["models"]["persistentVolumeClaim"]["readOnly"] is True
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] in claims
    assert volumes["checkpoints"]["persistentVolumeClaim"]["claimName"] in claims
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert mounts["/dev/shm"]["name"] == "dshm"
    for path in ("/tmp", "/cache", "/work"):
        assert "emptyDir" in volumes[mounts[path]["name"]]
    assert volumes["signing-key"]["secret"]["secretName"] == "oneseek-job-signing-key"
    env = env_of(container)
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


def test_config_hash_names(loaded: chart.Chart) -> None:
    base = {"baseModels": ["KB-Llama-3.1-8B-Swedish", "Mistral-7B-Instruct"]}
    name, run_id = _job_identity(loaded, base)
    assert RUN_ID_PATTERN.fullmatch(run_id)
    assert DNS_LABEL.fullmatch(name) and len(name) <= 52

    # Same values, same names: an unchanged upgrade or sync is a no-op.
    assert _job_identity(loaded, copy.deepcopy(base)) == (name, run_id)
    # New models: new Job and new run.
    other_name, other_run = _job_identity(loaded, {"baseModels": ["KB-Llama-3.1-8B-Swedish"]})
    assert other_name != name and other_run != run_id
    # Order matters (index i trains entry i).
    swapped = _job_identity(loaded, {"baseModels": list(reversed(base["baseModels"]))})
    assert swapped[0] != name
    # Scheduling change: new (immutable) Job spec, but the same training run.
    moved_name, moved_run = _job_identity(loaded, {**base, "priorityClassName": "batch-high"})
    assert moved_name != name and moved_run == run_id
    # Hyper-parameters change the result: new run.
    assert _job_identity(loaded, {**base, "training": {"learningRate": 0.001}})[1] != run_id
    # The nonce forces a re-run of an unchanged config.
    assert _job_identity(loaded, {**base, "runNonce": "again"})[1] != run_id
    # The test pod's settings do not touch the Job.
    assert _job_identity(loaded, {**base, "test": {"enabled": False}}) == (name, run_id)
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
    full = render(loaded, scenario_values(CHART_DIR / "ci" / "full-values.yaml"))
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
    assert container["args"] == ["train", "--allow-regression", "--configmap", "admin-models"]
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


def test_helm_test_pod_verifies_this_release_run(loaded: chart.Chart) -> None:
    values = scenario_values(CHART_DIR / "ci" / "full-values.yaml")
    docs = render(loaded, values)
    job_env = env_of(only(docs, "Job")["spec"]["template"]["spec"]["containers"][0])
    hooks = [d for d in docs if is_test_hook(d)]
    pod = next(d for d in hooks if d["kind"] == "Pod")
    key_map = next(d for d in hooks if d["kind"] == "ConfigMap")
    container = pod["spec"]["containers"][0]
    assert container["args"][:4] == [
        "verify",
        job_env["ARTIFACTS_URI"]["value"],
        "--run-id",
        job_env["RUN_ID"]["value"],
    ]
    assert container["args"][4] == "--public-key"
    assert "BEGIN PUBLIC KEY" in key_map["data"]["public-key.pem"]
    assert "resources" in container and "nvidia.com/gpu" not in str(container["resources"])
    assert not [d for d in render(loaded, {"test": {"enabled": False}}) if is_test_hook(d)]


def test_argocd_sync_hook_annotations(loaded: chart.Chart) -> None:
    hooked = only(render(loaded, {"argocd": {"syncHook": True}}), "Job")
    assert hooked["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "Sync"
    assert (
        hooked["metadata"]["annotations"]["argocd.argoproj.io/hook-delete-policy"]
        == "BeforeHookCreation"
    )
    plain = only(render(loaded, {}), "Job")
    assert "argocd.argoproj.io/hook" not in plain["metadata"]["annotations"]
    assert plain["spec"]["ttlSecondsAfterFinished"] == 604800
    kept = only(render(loaded, {"job": {"ttlSecondsAfterFinished": None}}), "Job")
    assert "ttlSecondsAfterFinished" not in kept["spec"]


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
