"""Pre-flight checks one by one: bounded in time, exit codes that match what a retry can do."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from oneseek_job import demo, preflight
from oneseek_job.config import load_settings
from oneseek_job.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    ConfigError,
    InputError,
    JobError,
    TransientError,
)
from oneseek_job.preflight import Preflight

pytestmark = pytest.mark.timeout(120)


def _ctx(tmp_path: Path, **overrides: object) -> Preflight:
    values: dict[str, object] = {
        "base_models": "good-model",
        "models_dir": tmp_path / "models",
        "dataset": tmp_path / "data.jsonl",
        "artifacts_uri": str(tmp_path / "artifacts"),
        "work_dir": tmp_path / "work",
        "run_id": "run-preflight",
    }
    values.update(overrides)
    return Preflight(settings=load_settings(**values))


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"checkpoint_dir": "artifacts/oneseek-certified/ck"}, "CHECKPOINT_DIR"),
        ({"checkpoint_dir": "artifacts"}, "is the same directory as ARTIFACTS_URI"),
        ({"artifacts_uri": "work/out"}, "ARTIFACTS_URI"),
        ({"artifacts_uri": "models/out"}, "is inside MODELS_DIR"),
        ({"work_dir": "models/work"}, "ONESEEK_WORK_DIR"),
        ({"models_dir": "work/models"}, "MODELS_DIR"),
        ({"checkpoint_dir": "models/ck"}, "CHECKPOINT_DIR"),
        ({"work_dir": "artifacts/w"}, "ONESEEK_WORK_DIR"),
        ({"artifacts_uri": "file://{root}/models"}, "same directory"),
    ],
)
def test_overlapping_locations_are_refused(
    tmp_path: Path, overrides: dict[str, str], words: str
) -> None:
    values: dict[str, object] = {}
    for name, value in overrides.items():
        value = value.replace("{root}", str(tmp_path))
        values[name] = value if "://" in value else str(tmp_path / value)
    with pytest.raises(ConfigError, match=words) as info:
        preflight.check_paths(_ctx(tmp_path, **values))
    assert info.value.exit_code == EXIT_BAD_INPUT


def test_default_checkpoint_inside_work_dir_is_fine(tmp_path: Path) -> None:
    preflight.check_paths(_ctx(tmp_path))
    preflight.check_paths(_ctx(tmp_path, artifacts_uri="s3://bucket/prefix"))


def test_work_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "work").write_text("not a dir")
    with pytest.raises(ConfigError, match=r"ONESEEK_WORK_DIR .* not a directory"):
        preflight.check_paths(_ctx(tmp_path))
    with pytest.raises(ConfigError, match="not a writable directory"):
        preflight.check_locations(_ctx(tmp_path))


def test_work_dir_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a writable directory") as info:
        preflight.check_locations(_ctx(tmp_path, work_dir=tmp_path / "file" / "work"))
    assert info.value.exit_code == EXIT_BAD_INPUT


# ----------------------------------------------------------------------------- signing key


@pytest.fixture
def keypair(tmp_path: Path) -> Path:
    from oneseek_job.provenance import generate_keypair

    private, _public = generate_keypair(tmp_path / "keys")
    return private


def test_signing_key_accepted_and_loaded(tmp_path: Path, keypair: Path) -> None:
    ctx = _ctx(tmp_path, signing_key_file=keypair)
    preflight.check_signing_key(ctx)
    assert ctx.signing_key is not None
    keypair.chmod(0o440)  # the chart's defaultMode with fsGroup
    preflight.check_signing_key(ctx)


@pytest.mark.parametrize(
    ("mode", "words"), [(0o644, "readable by every user"), (0o620, "writable")]
)
def test_signing_key_permissions(tmp_path: Path, keypair: Path, mode: int, words: str) -> None:
    keypair.chmod(mode)
    with pytest.raises(ConfigError, match=words):
        preflight.check_signing_key(_ctx(tmp_path, signing_key_file=keypair))


def test_signing_key_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "key.pem"
    os.mkfifo(fifo, 0o600)
    started = time.monotonic()
    with pytest.raises(InputError, match="not a regular file"):
        preflight.check_signing_key(_ctx(tmp_path, signing_key_file=fifo))
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"garbage", "not an unencrypted PEM key"),
        (b"", "not an unencrypted PEM key"),
        ("rsa", "not an ECDSA P-256"),
    ],
)
def test_signing_key_format_and_type(tmp_path: Path, content: bytes | str, words: str) -> None:
    key = tmp_path / "key.pem"
    if content == "rsa":
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        content = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    assert isinstance(content, bytes)
    key.write_bytes(content)
    key.chmod(0o400)
    with pytest.raises(JobError, match=words) as info:
        preflight.check_signing_key(_ctx(tmp_path, signing_key_file=key))
    assert info.value.exit_code == EXIT_BAD_INPUT


def test_signing_key_device_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a regular file"):
        preflight.check_signing_key(_ctx(tmp_path, signing_key_file=Path("/dev/zero")))


# ----------------------------------------------------------------------------- S3 budget


@pytest.fixture
def black_hole() -> Iterator[str]:
    """An endpoint that accepts TCP connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_silent_s3_endpoint_fails_within_the_budget(
    tmp_path: Path, black_hole: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preflight, "S3_BUDGET_S", 2.0)
    ctx = _ctx(
        tmp_path,
        artifacts_uri="s3://bucket/prefix",
        s3_endpoint_url=black_hole,
        aws_access_key_id="AKIAEXAMPLE",
        aws_secret_access_key="secret-example",
        aws_region="us-east-1",
    )
    started = time.monotonic()
    with pytest.raises(TransientError, match="did not answer within 2 s") as info:
        preflight.check_store(ctx)
    assert time.monotonic() - started < 5
    assert info.value.exit_code == EXIT_FAILED


# ----------------------------------------------------------------------------- templates


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("preflight-model") / "tiny-llama"
    return demo.build_tiny_model(target, architecture="llama", display_name="Tiny", seed=0)


def _with_template(tmp_path: Path, tiny_model: Path, template: str) -> Preflight:
    from oneseek_job.data import load_records
    from oneseek_job.discovery import discover, resolve_base_models

    models = tmp_path / "models"
    shutil.copytree(tiny_model, models / "good-model")
    (models / "good-model" / "chat_template.jinja").write_text(template)
    data = tmp_path / "data.jsonl"
    chat = {
        "messages": [{"role": "user", "content": "Hej?"}, {"role": "assistant", "content": "Hej!"}]
    }
    data.write_text("\n".join(json.dumps(chat) for _ in range(3)) + "\n")
    ctx = _ctx(tmp_path)
    ctx.records = load_records(data)
    ctx.resolutions = resolve_base_models(["good-model"], discover(models))
    ctx.selected = ctx.resolutions
    return ctx


@pytest.mark.parametrize(
    ("template", "words"),
    [
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "longer than",
        ),
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "SecurityError"),
        ("{{ raise_exception('only user/assistant turns') }}", "only user/assistant turns"),
        ("{{ 'x' * 100000000 }}", "characters|longer than"),  # either budget may trip first
        ("{% for m in messages %}{{ m.content | nosuchfilter }}{% endfor %}", "nosuchfilter"),
    ],
)
def test_chat_template_failures_are_bad_input(
    tmp_path: Path, tiny_model: Path, template: str, words: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preflight, "TEMPLATE_BUDGET_S", 3.0)
    ctx = _with_template(tmp_path, tiny_model, template)
    started = time.monotonic()
    with pytest.raises(InputError, match=words) as info:
        preflight.check_tokenizers(ctx)
    assert time.monotonic() - started < 15
    assert info.value.exit_code == EXIT_BAD_INPUT


def test_good_chat_template_passes(tmp_path: Path, tiny_model: Path) -> None:
    ctx = _with_template(tmp_path, tiny_model, demo.CHAT_TEMPLATE)
    preflight.check_tokenizers(ctx)


def test_checks_are_named_and_ordered_cheapest_first() -> None:
    names = [check.name for check in preflight.CHECKS]
    assert len(names) == len(set(names))
    assert names.index("required-settings") < names.index("models") < names.index("tokenizers")
    assert names.index("dataset") < names.index("tokenizers")
    assert names[-1] == "tokenizers"  # the only check that imports transformers


def test_dns_temporary_failure_is_transient_and_unknown_host_is_bad_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from oneseek_job import storage

    def fail(code: int) -> None:
        def getaddrinfo(*_args: object, **_kwargs: object) -> None:
            raise socket.gaierror(code, "lookup failed")

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    fail(socket.EAI_AGAIN)
    with pytest.raises(TransientError, match="EAI_AGAIN") as info:
        storage._check_endpoint("http://minio.internal:9000")
    assert info.value.exit_code == EXIT_FAILED
    fail(socket.EAI_NONAME)
    with pytest.raises(ConfigError, match="does not resolve") as info2:
        storage._check_endpoint("http://minio.internal:9000")
    assert info2.value.exit_code == EXIT_BAD_INPUT


@pytest.mark.parametrize(
    ("errno_name", "code"),
    [("ENOSPC", 2), ("EDQUOT", 2), ("EROFS", 2), ("EACCES", 2), ("EIO", 1), ("ESTALE", 1)],
)
def test_os_errors_map_to_what_a_retry_can_do(errno_name: str, code: int) -> None:
    import errno

    from oneseek_job.errors import exit_code_for_os_error

    number = getattr(errno, errno_name)
    assert exit_code_for_os_error(OSError(number, os.strerror(number))) == code
