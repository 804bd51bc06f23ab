"""JobSettings: env first, CLI overrides, one-line errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from oneseek_job.config import default_run_id, load_settings
from oneseek_job.errors import EXIT_BAD_INPUT, ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "BASE_MODELS",
        "MODELS_DIR",
        "DATASET",
        "RUN_ID",
        "ARTIFACTS_URI",
        "MODEL_VERSION",
    ):
        monkeypatch.delenv(name, raising=False)


def test_env_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASE_MODELS", " KB-Llama-3.1-8B-Swedish , ,Mistral-7B-Instruct,")
    monkeypatch.setenv("MODELS_DIR", "/pvc/models")
    monkeypatch.setenv("ONESEEK_LORA_R", "8")
    monkeypatch.setenv("ONESEEK_LORA_TARGET_MODULES", "q_proj, v_proj")
    monkeypatch.setenv("ONESEEK_EPOCHS", "3")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    settings = load_settings()
    assert settings.base_models == ["KB-Llama-3.1-8B-Swedish", "Mistral-7B-Instruct"]
    assert settings.models_dir == Path("/pvc/models")
    assert settings.lora.r == 8
    assert settings.lora.target_modules == ["q_proj", "v_proj"]
    assert settings.train.epochs == 3
    assert settings.job_completion_index == 1


def test_cli_overrides_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASE_MODELS", "a")
    monkeypatch.setenv("ONESEEK_SEED", "1")
    settings = load_settings(base_models="b,c", train={"seed": 7, "epochs": None})
    assert settings.base_models == ["b", "c"]
    assert settings.train.seed == 7
    assert settings.train.epochs == 1


def test_defaults() -> None:
    settings = load_settings()
    assert settings.models_dir == Path("/models")
    assert settings.artifacts_uri == "./artifacts"
    assert settings.model_version == "1.0"
    assert settings.run_id.startswith("run-") and len(settings.run_id) == len("run-20251123-001234")
    assert settings.lora.r == 16 and settings.lora.alpha == 32
    assert settings.checkpoint_root == Path("work/checkpoints")


def test_default_run_id_format() -> None:
    from datetime import UTC, datetime

    assert default_run_id(datetime(2025, 11, 23, 0, 12, 34, tzinfo=UTC)) == "run-20251123-001234"


@pytest.mark.parametrize(
    ("env", "value", "words"),
    [
        ("ONESEEK_EPOCHS", "many", "ONESEEK_EPOCHS"),
        ("ONESEEK_EPOCHS", "0", "greater than or equal to 1"),
        ("ONESEEK_LORA_R", "-4", "ONESEEK_LORA_R"),
        ("ONESEEK_LORA_DROPOUT", "1.5", "ONESEEK_LORA_DROPOUT"),
        ("ONESEEK_LR_SCHEDULE", "exponential", "'cosine', 'linear' or 'constant'"),
        ("RUN_ID", "../escape", "RUN_ID: must be 1-128 characters"),
        ("MODEL_VERSION", "v1", "MODEL_VERSION: must look like 1.0"),
        ("JOB_COMPLETION_INDEX", "-1", "JOB_COMPLETION_INDEX"),
        ("JOB_COMPLETION_INDEX", "100000", "JOB_COMPLETION_INDEX"),
        ("ONESEEK_LORA_ALPHA", "inf", "ONESEEK_LORA_ALPHA: Input should be a finite number"),
        ("ONESEEK_LORA_ALPHA", "nan", "ONESEEK_LORA_ALPHA"),
        ("ONESEEK_LORA_ALPHA", "1e300", "ONESEEK_LORA_ALPHA"),
        ("ONESEEK_LEARNING_RATE", "-inf", "ONESEEK_LEARNING_RATE"),
        ("ONESEEK_WARMUP_RATIO", "NaN", "ONESEEK_WARMUP_RATIO"),
        ("ONESEEK_MAX_GRAD_NORM", "Infinity", "ONESEEK_MAX_GRAD_NORM"),
        ("ONESEEK_WEIGHT_DECAY", "1e9", "ONESEEK_WEIGHT_DECAY"),
        ("ONESEEK_SEED", str(2**64 + 1), "ONESEEK_SEED"),
        ("ONESEEK_SEED", "9" * 5000, "ONESEEK_SEED"),
        ("ONESEEK_MAX_STEPS", str(10**12), "ONESEEK_MAX_STEPS"),
        ("ONESEEK_BATCH_TOKENS", str(10**12), "ONESEEK_BATCH_TOKENS"),
        ("ONESEEK_CHECKPOINT_EVERY", str(10**12), "ONESEEK_CHECKPOINT_EVERY"),
        (
            "ARTIFACTS_URI",
            " s3://bucket/prefix",
            "ARTIFACTS_URI: has leading or trailing whitespace",
        ),
        ("ARTIFACTS_URI", "./artifacts ", "ARTIFACTS_URI: has leading or trailing whitespace"),
        ("MODELS_DIR", "/models\n", "MODELS_DIR: has leading or trailing whitespace"),
        ("DATASET", "/data/qa.jsonl\t", "DATASET"),
        ("CHECKPOINT_DIR", " /ckpt", "CHECKPOINT_DIR"),
        ("ONESEEK_WORK_DIR", "/work ", "ONESEEK_WORK_DIR"),
        ("ONESEEK_SIGNING_KEY_FILE", "/keys/k.pem ", "ONESEEK_SIGNING_KEY_FILE"),
        ("MODELS_DIR", "/mod\x1bels", "MODELS_DIR: contains control characters"),
        ("S3_ENDPOINT_URL", "http://[::1", "S3_ENDPOINT_URL: is not a valid URL"),
        ("S3_ENDPOINT_URL", "http://host:99999", "S3_ENDPOINT_URL: is not a valid URL"),
        ("S3_ENDPOINT_URL", "http://host:abc", "S3_ENDPOINT_URL"),
        ("S3_ENDPOINT_URL", "localhost:8333", "S3_ENDPOINT_URL: must be an http(s)"),
        ("S3_ENDPOINT_URL", "http://user:pw@host", "must not carry credentials"),
        ("S3_ENDPOINT_URL", " http://host", "S3_ENDPOINT_URL: has leading"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, words: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert words in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == EXIT_BAD_INPUT


def test_secrets_are_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "supersecretvalue123")
    settings = load_settings()
    assert "supersecretvalue123" not in repr(settings)
    assert settings.aws_secret_access_key is not None
    assert settings.aws_secret_access_key.get_secret_value() == "supersecretvalue123"


@pytest.mark.parametrize(
    ("level", "fmt", "words"),
    [
        ("LOUD", None, "ONESEEK_LOG_LEVEL: must be one of"),
        ("info2", None, "ONESEEK_LOG_LEVEL"),
        ("INFO", "yaml", "ONESEEK_LOG_FORMAT: must be json or console"),
    ],
)
def test_logging_env_is_checked(level: str, fmt: str | None, words: str) -> None:
    from oneseek_job.config import check_logging_env

    with pytest.raises(ConfigError, match=words) as info:
        check_logging_env(level, fmt)
    assert info.value.exit_code == EXIT_BAD_INPUT


def test_logging_env_accepts_any_case() -> None:
    from oneseek_job.config import check_logging_env

    assert check_logging_env("debug", "JSON") == ("DEBUG", True)
    assert check_logging_env(None, None) == ("INFO", None)
