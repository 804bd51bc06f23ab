"""Every case of tests/bad_inputs/ through the real CLI: exit code, one error line, no traceback."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from oneseek_job import demo
from tests.bad_inputs.cases import CASES, Case, S3Target, Workspace
from tests.servers import SeaweedServer

pytestmark = pytest.mark.timeout(180)


def cli_command() -> list[str]:
    """The installed ``oneseek-job`` console script next to the interpreter, else ``-m``."""
    script = Path(sys.executable).parent / "oneseek-job"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "oneseek_job.cli"]


def clean_env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    """A minimal environment: nothing of the developer's AWS_*/ONESEEK_* leaks into a case."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        # A checkout run without installing (or a patched copy) must reach the subprocess too.
        **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}),
        "ONESEEK_LOG_FORMAT": "json",
        "AWS_EC2_METADATA_DISABLED": "true",  # never wait for an instance-metadata endpoint
    }
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def real_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's tiny Llama (real config, weights, tokenizer), built once per session."""
    target = tmp_path_factory.mktemp("bad-inputs-real") / "tiny-llama"
    return demo.build_tiny_model(target, architecture="llama", display_name="Tiny-Llama", seed=0)


def _limit(fsize: int | None) -> Callable[[], None] | None:
    if fsize is None:
        return None

    def apply() -> None:
        # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG like a full disk.
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return apply


def run_case(case: Case, ws: Workspace) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ws.wrap, *cli_command(), *ws.args],
        env=clean_env(ws.root / "home", ws.env),
        cwd=ws.root,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=150,
        preexec_fn=_limit(ws.fsize_limit),  # only setrlimit: safe before exec
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    ws = Workspace.create(tmp_path)
    if "real_model" in case.needs:
        ws.real_model = request.getfixturevalue("real_model")
    if "s3" in case.needs:
        server: SeaweedServer = request.getfixturevalue("seaweed")
        ws.s3 = S3Target(
            server.endpoint_url,
            request.getfixturevalue("fresh_bucket"),
            server.admin.access_key,
            server.admin.secret_key,
        )
    case.setup(ws)

    result = run_case(case, ws)
    output = result.stdout + result.stderr
    context = f"{case.id}: {case.description}\n--- stderr tail:\n{result.stderr[-3000:]}"

    assert "Traceback" not in output, context
    assert result.returncode == case.exit_code, context
    if case.exit_code == 0:
        for word in case.words:
            assert word.lower() in output.lower(), f"{word!r} missing\n{context}"
    else:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines, context
        last = lines[-1]
        assert last.startswith("error: "), context
        assert len(last) < 1500, f"error line is {len(last)} characters\n{context}"
        for word in case.words:
            assert word.lower() in last.lower(), f"{word!r} not in {last!r}"
        assert sum(line.startswith("error: ") for line in lines) == 1, context
    if case.after is not None:
        case.after(ws)


def test_corpus_covers_the_issue() -> None:
    """The issue's list, by id: a case silently dropped from the table fails here."""
    required = {
        "base-models-empty", "base-models-whitespace", "base-models-10000-names",
        "base-models-unicode", "base-models-shell-metacharacters", "base-models-dotdot",
        "base-models-absolute", "model-symlink-outside", "config-missing", "config-empty",
        "config-not-json", "config-wrong-architecture", "tokenizer-missing",
        "safetensors-truncated", "safetensors-corrupt", "pickle-only-refused",
        "pickle-allowed-trains", "config-remote-code", "dataset-missing", "dataset-empty",
        "dataset-not-jsonl", "dataset-missing-fields", "dataset-huge-record",
        "dataset-wrong-encoding", "artifacts-uri-bad-bucket", "s3-endpoint-down",
        "s3-bad-credentials", "s3-missing-bucket", "artifacts-read-only", "checkpoint-disk-full",
    }  # fmt: skip
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert required <= set(ids), sorted(required - set(ids))
