"""No secret in any log line or artifact: a signed job against real S3, and a failing one.

The job runs as the Kubernetes Job does (credentials and signing key from the environment /
a mounted file) against SeaweedFS with enforced credentials; then every line it printed and
every byte it wrote (the S3 objects of the run, the local work and checkpoint files) is
searched for the access key id, the secret key and the private key's PEM body.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from oneseek_job.provenance import generate_keypair
from tests._reliability import build_tiny_workspace, cli, job_env
from tests.servers import SeaweedServer

pytestmark = pytest.mark.timeout(300)


def _pem_secrets(private_key: Path) -> list[str]:
    """The private key's base64 body, whole and line by line (each line alone is key material)."""
    lines = [
        line.strip()
        for line in private_key.read_text().splitlines()
        if line.strip() and not line.startswith("-----")
    ]
    return ["".join(lines), *lines]


def _leaks(haystack: bytes, secrets: list[str]) -> list[str]:
    return [s for s in secrets if s.encode() in haystack]


def test_signed_s3_job_leaks_no_secret(
    seaweed: SeaweedServer, fresh_bucket: str, tmp_path: Path
) -> None:
    ws = build_tiny_workspace(tmp_path / "ws")
    private, public = generate_keypair(tmp_path / "keys", name="oneseek-signing")
    secrets = [seaweed.admin.access_key, seaweed.admin.secret_key, *_pem_secrets(private)]
    prefix = "secrets/job"
    env = job_env(
        ws,
        tmp_path / "run",
        RUN_ID="run-secrets",
        ONESEEK_MAX_STEPS="3",
        ONESEEK_CHECKPOINT_EVERY="1",
        ONESEEK_LOG_LEVEL="DEBUG",
        ARTIFACTS_URI=f"s3://{fresh_bucket}/{prefix}",
        S3_ENDPOINT_URL=seaweed.endpoint_url,
        AWS_ACCESS_KEY_ID=seaweed.admin.access_key,
        AWS_SECRET_ACCESS_KEY=seaweed.admin.secret_key,
        AWS_REGION=seaweed.region,
        ONESEEK_SIGNING_KEY_FILE=str(private),
    )
    result = cli(["train"], env)
    assert result.returncode == 0, result.stderr[-2000:]
    log_text = (result.stdout + result.stderr).encode()
    assert b'"event": "certified"' in log_text  # the whole story was logged, then searched
    assert _leaks(log_text, secrets) == []

    client = seaweed.client()
    listed = client.list_objects_v2(Bucket=fresh_bucket, Prefix=prefix).get("Contents", [])
    keys = [o["Key"] for o in listed]
    assert any(k.endswith("MANIFEST.json.sig") for k in keys), keys  # really signed
    for key in keys:
        body = client.get_object(Bucket=fresh_bucket, Key=key)["Body"].read()
        assert _leaks(body, secrets) == [], key
    local = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert local  # staging, checkpoints, live metrics
    for path in local:
        assert _leaks(path.read_bytes(), secrets) == [], path

    verified = cli(
        ["verify", f"s3://{fresh_bucket}/{prefix}", "--current", "--public-key", str(public)], env
    )
    assert verified.returncode == 0, verified.stdout[-1500:] + verified.stderr[-1500:]
    assert _leaks((verified.stdout + verified.stderr).encode(), secrets) == []


def test_bad_credentials_error_leaks_no_secret(
    seaweed: SeaweedServer, fresh_bucket: str, tmp_path: Path
) -> None:
    ws = build_tiny_workspace(tmp_path / "ws")
    access_key, secret_key = "OSKFAKEACCESSKEY7Q2Z", "fake/Secret+Key=must-never-be-printed-42"
    env = job_env(
        ws,
        tmp_path / "run",
        RUN_ID="run-secrets-bad",
        # Debug mode prints botocore's request logs (Authorization header) and tracebacks.
        ONESEEK_DEBUG="1",
        ONESEEK_LOG_LEVEL="DEBUG",
        ARTIFACTS_URI=f"s3://{fresh_bucket}/secrets/bad",
        S3_ENDPOINT_URL=seaweed.endpoint_url,
        AWS_ACCESS_KEY_ID=access_key,
        AWS_SECRET_ACCESS_KEY=secret_key,
        AWS_REGION=seaweed.region,
    )
    result = cli(["train"], env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "rejected the credentials" in result.stderr.splitlines()[-1]
    assert "Authorization" in result.stderr or "botocore" in result.stderr  # debug really on
    assert _leaks((result.stdout + result.stderr).encode(), [access_key, secret_key]) == []


def test_redaction_drops_secret_keys_but_keeps_metrics() -> None:
    """Secret-looking keys are dropped; token *counts* and tokenizer paths stay readable."""
    from oneseek_job.logs import REDACTED, redact_secrets

    event = redact_secrets(
        None,
        "info",
        {
            "tokens_per_second": 1234.5,
            "train_tokens": 4096,
            "tokenizer": "/models/kb/tokenizer.json",
            "aws_session_token": "FwoGZXIvYXdzEJr",
            "access_token": "ya29.secret",
            "signing_key_file": "/var/run/secrets/key.pem",
        },
    )
    assert event["tokens_per_second"] == 1234.5 and event["train_tokens"] == 4096
    assert event["tokenizer"] == "/models/kb/tokenizer.json"
    assert event["aws_session_token"] == event["access_token"] == REDACTED
    assert event["signing_key_file"] == REDACTED
