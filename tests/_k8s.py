"""Shared checks for rendered Kubernetes manifests (chart and kustomize tests).

``restricted_violations`` implements the "restricted" Pod Security Standard (which includes
"baseline") as the API server's PodSecurity admission checks it, plus two house rules of
this project: a read-only root filesystem and a writable /tmp emptyDir.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

__all__ = [
    "CRDS",
    "KUBE_VERSION",
    "crd_validate_strict",
    "load_docs",
    "pod_spec",
    "restricted_violations",
    "schema_at",
    "validate_strict",
]

# The newest schema kubernetes-validate ships: validate against what clusters run next.
KUBE_VERSION = kubernetes_validate.latest_version()

# Volume types the restricted profile allows.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
BASELINE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
}


def load_docs(text: str) -> list[dict[str, Any]]:
    """Parse a multi-document YAML stream, dropping empty documents."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def validate_strict(obj: dict[str, Any]) -> None:
    """Validate one object against the newest Kubernetes schema, unknown fields rejected."""
    kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


CRDS = Path(__file__).parent / "crds"


def _closed(schema: Any) -> Any:
    """The CRD schema with every object that names its properties closed to others.

    The API server prunes unknown fields of custom resources silently; a test must refuse
    them, as ``kubernetes-validate --strict`` does for built-in kinds. Nodes that preserve
    unknown fields, or declare their own additionalProperties, stay as they are.
    """
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    node = {key: _closed(value) for key, value in schema.items()}
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False
    if node.get("x-kubernetes-int-or-string"):
        node.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    return node


@cache
def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) → closed openAPIV3Schema, for every CRD under tests/crds/."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                schema = _closed(version["schema"]["openAPIV3Schema"])
                schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def crd_validate_strict(obj: dict[str, Any]) -> None:
    """Validate a custom resource against its CRD's schema, unknown fields rejected.

    Raises:
        KeyError: no CRD under tests/crds/ serves that apiVersion and kind.
        jsonschema.ValidationError: the object does not match.
    """
    schema = _crd_schemas()[(obj["apiVersion"], obj["kind"])]
    jsonschema.validate(obj, schema, cls=jsonschema.Draft7Validator)


def _builtin_schema(api_version: str, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """kubernetes-validate's strict schema of a built-in kind and the definitions it refers to."""
    from kubernetes_validate.utils import schema_contents

    version = kubernetes_validate.utils.all_versions()[-1]
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    group = api_version.split("/")[0].split(".")[0] + "-" if "/" in api_version else ""
    name = f"{kind.lower()}-{group}{api_version.split('/')[-1]}.json"
    schema = schema_contents(f"{folder}/{name}", version)
    return schema, schema_contents(f"{folder}/_definitions.json", version)["$defs"]


def schema_at(api_version: str, kind: str, path: list[str | int]) -> dict[str, Any] | None:
    """The schema of the field at ``path`` in an object of that kind; None where no such
    field exists. Custom resources use their CRD under tests/crds/, built-in kinds the
    schema kubernetes-validate ships. Map values (labels, annotations) take any key."""
    if (api_version, kind) in _crd_schemas():
        node, definitions = _crd_schemas()[(api_version, kind)], {}
    else:
        node, definitions = _builtin_schema(api_version, kind)
    for part in path:
        while "$ref" in node:
            node = definitions[node["$ref"].rsplit("/", 1)[-1]]
        if isinstance(part, int):
            found = node.get("items")
        elif part in node.get("properties", {}):
            found = node["properties"][part]
        elif isinstance(node.get("additionalProperties"), dict):
            found = node["additionalProperties"]
        else:
            found = None
        if not isinstance(found, dict):
            return None
        node = found
    return node


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec of a Pod, or of a workload's pod template; None for other kinds."""
    if obj["kind"] == "Pod":
        spec: dict[str, Any] = obj["spec"]
        return spec
    template = obj.get("spec", {}).get("template")
    if obj["kind"] in {"Job", "Deployment", "StatefulSet", "DaemonSet"} and template:
        spec = template["spec"]
        return spec
    return None


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """Every way ``spec`` breaks the restricted Pod Security Standard (empty = compliant)."""
    problems: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            problems.append(f"{flag} is set")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in BASELINE_SYSCTLS:
            problems.append(f"sysctl {sysctl.get('name')} is not allowed")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']} uses {sorted(kinds - RESTRICTED_VOLUMES)}")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    pod_non_root = pod_sc.get("runAsNonRoot")
    if pod_sc.get("runAsUser") == 0:
        problems.append("pod runAsUser is 0")
    if pod_sc.get("windowsOptions", {}).get("hostProcess"):
        problems.append("pod is a Windows hostProcess")
    containers = (
        list(spec.get("initContainers") or [])
        + list(spec.get("containers") or [])
        + list(spec.get("ephemeralContainers") or [])
    )
    for container in containers:
        name = container["name"]
        sc = container.get("securityContext") or {}
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{name}: capabilities must drop ALL")
        extra = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if extra:
            problems.append(f"{name}: adds capabilities {sorted(extra)}")
        non_root = sc.get("runAsNonRoot", pod_non_root)
        if non_root is not True:
            problems.append(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser is 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in {"RuntimeDefault", "Localhost"}:
            problems.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{name}: hostPort {port['hostPort']}")
        if sc.get("procMount", "Default") != "Default":
            problems.append(f"{name}: procMount {sc['procMount']}")
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            problems.append(f"{name}: AppArmor unconfined")
        # House rules beyond PSS: immutable image filesystem, scratch on an emptyDir.
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: readOnlyRootFilesystem must be true")
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts") or []}
        empty_dirs = {v["name"] for v in spec.get("volumes") or [] if "emptyDir" in v}
        if mounts.get("/tmp") not in empty_dirs:
            problems.append(f"{name}: /tmp must be an emptyDir mount")
    return problems
