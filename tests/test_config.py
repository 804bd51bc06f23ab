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
