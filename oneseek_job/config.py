"""One settings object for the whole job: every env var of DESIGN.md, validated once.

Env first, CLI options override (the CLI passes its non-None options as init kwargs,
which pydantic-settings ranks above the environment). Nothing below ``cli.py`` reads
``os.environ``; it takes a ``JobSettings`` or an explicit sub-config instead.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from oneseek_job.errors import ConfigError

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_SEED",
    "JobSettings",
    "LoraSettings",
    "TrainSettings",
    "check_logging_env",
    "default_run_id",
    "load_settings",
]

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
VERSION_PATTERN = re.compile(r"^[0-9]{1,6}(\.[0-9]{1,6}){0,3}$")
# The data order is seeded with seed * 1_000_003 + epoch, which torch needs below 2**63; the
# usual 32-bit range keeps every library (numpy included) happy with room to spare.
MAX_SEED = 2**32 - 1
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("json", "console")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def default_run_id(now: datetime | None = None) -> str:
    """``run-YYYYMMDD-HHMMSS`` in UTC, the seed's run directory name."""
    return (now or datetime.now(UTC)).strftime("run-%Y%m%d-%H%M%S")


def _env(name: str, *more: str) -> AliasChoices:
    # The field name stays usable as a kwarg (CLI overrides); the env names are DESIGN.md's.
    return AliasChoices(name, *more)


class _Base(BaseSettings):
    model_config = SettingsConfigDict(
        case_sensitive=False,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
        env_ignore_empty=True,
        # inf / nan parse as floats; no hyper-parameter means anything with them.
        allow_inf_nan=False,
    )


class LoraSettings(_Base):
    """LoRA hyper-parameters. Defaults fit 7–9B causal LMs (r16, alpha 32, all projections)."""

    r: int = Field(16, ge=1, le=1024, validation_alias=_env("r", "ONESEEK_LORA_R"))
    alpha: float = Field(32.0, gt=0, le=65536, validation_alias=_env("alpha", "ONESEEK_LORA_ALPHA"))
    dropout: float = Field(
        0.05, ge=0.0, lt=1.0, validation_alias=_env("dropout", "ONESEEK_LORA_DROPOUT")
    )
    # Empty = pick by architecture (q/k/v/o + MLP projections); see training.TARGET_MODULES.
    target_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=_env("target_modules", "ONESEEK_LORA_TARGET_MODULES"),
    )

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class TrainSettings(_Base):
    """Optimisation and data settings of one LoRA run."""

    learning_rate: float = Field(
        2e-4, gt=0, le=1.0, validation_alias=_env("learning_rate", "ONESEEK_LEARNING_RATE")
    )
    epochs: int = Field(1, ge=1, le=1000, validation_alias=_env("epochs", "ONESEEK_EPOCHS"))
    # 0 = as many optimizer steps as the epochs need.
    max_steps: int = Field(
        0, ge=0, le=100_000_000, validation_alias=_env("max_steps", "ONESEEK_MAX_STEPS")
    )
    seq_len: int = Field(
        2048, ge=16, le=131072, validation_alias=_env("seq_len", "ONESEEK_SEQ_LEN")
    )
    # Tokens per optimizer step over all processes: batch_tokens // seq_len packed blocks,
    # split among the processes and accumulated in micro-batches (training/schedule.py).
    batch_tokens: int = Field(
        16384, ge=16, le=1 << 26, validation_alias=_env("batch_tokens", "ONESEEK_BATCH_TOKENS")
    )
    micro_batch_size: int = Field(
        1, ge=1, le=1024, validation_alias=_env("micro_batch_size", "ONESEEK_MICRO_BATCH_SIZE")
    )
    warmup_ratio: float = Field(
        0.03, ge=0.0, lt=1.0, validation_alias=_env("warmup_ratio", "ONESEEK_WARMUP_RATIO")
    )
    lr_schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", validation_alias=_env("lr_schedule", "ONESEEK_LR_SCHEDULE")
    )
    weight_decay: float = Field(
        0.0, ge=0.0, le=10.0, validation_alias=_env("weight_decay", "ONESEEK_WEIGHT_DECAY")
    )
    max_grad_norm: float = Field(
        1.0, ge=0.0, le=1e6, validation_alias=_env("max_grad_norm", "ONESEEK_MAX_GRAD_NORM")
    )
    seed: int = Field(42, ge=0, le=MAX_SEED, validation_alias=_env("seed", "ONESEEK_SEED"))
    val_fraction: float = Field(
        0.1, gt=0.0, lt=0.5, validation_alias=_env("val_fraction", "ONESEEK_VAL_FRACTION")
    )
    gradient_checkpointing: bool = Field(
        False,
        validation_alias=_env("gradient_checkpointing", "ONESEEK_GRADIENT_CHECKPOINTING"),
    )
    checkpoint_every: int = Field(
        50,
        ge=1,
        le=1_000_000,
        validation_alias=_env("checkpoint_every", "ONESEEK_CHECKPOINT_EVERY"),
    )
    log_every: int = Field(
        10, ge=1, le=1_000_000, validation_alias=_env("log_every", "ONESEEK_LOG_EVERY")
    )
    loss_on: Literal["answer", "all"] = Field(
        "answer", validation_alias=_env("loss_on", "ONESEEK_LOSS_ON")
    )
    allow_regression: bool = Field(
        False, validation_alias=_env("allow_regression", "ONESEEK_ALLOW_REGRESSION")
    )
    skip_bad_records: bool = Field(
        False, validation_alias=_env("skip_bad_records", "ONESEEK_SKIP_BAD_RECORDS")
    )
    compile: bool = Field(False, validation_alias=_env("compile", "ONESEEK_COMPILE"))


class JobSettings(_Base):
    """Every setting of a job run. Build it with :func:`load_settings`."""

    base_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=_env("base_models", "BASE_MODELS")
    )
    models_dir: Path = Field(Path("/models"), validation_alias=_env("models_dir", "MODELS_DIR"))
    dataset: Path | None = Field(None, validation_alias=_env("dataset", "DATASET"))
    artifacts_uri: str = Field(
        "./artifacts", min_length=1, validation_alias=_env("artifacts_uri", "ARTIFACTS_URI")
    )
    s3_endpoint_url: str | None = Field(
        None, validation_alias=_env("s3_endpoint_url", "S3_ENDPOINT_URL", "AWS_ENDPOINT_URL")
    )
    aws_region: str | None = Field(
        None, validation_alias=_env("aws_region", "AWS_REGION", "AWS_DEFAULT_REGION")
    )
    run_id: str = Field(default_factory=default_run_id, validation_alias=_env("run_id", "RUN_ID"))
    model_version: str = Field("1.0", validation_alias=_env("model_version", "MODEL_VERSION"))
    job_completion_index: int | None = Field(
        # Kubernetes caps an Indexed Job at 100,000 completions.
        None,
        ge=0,
        le=99_999,
        validation_alias=_env("job_completion_index", "JOB_COMPLETION_INDEX"),
    )
    # Which model this pod trains, apart from JOB_COMPLETION_INDEX: in a multi-node group
    # (JobSet) the completion index is the node rank, and the model comes from here.
    model_index: int | None = Field(
        None, ge=0, le=63, validation_alias=_env("model_index", "ONESEEK_MODEL_INDEX")
    )
    # The number of models the Job was rendered for (chart / kustomize): a BASE_MODELS
    # of another length means the Job's completions and its list drifted apart.
    model_count: int | None = Field(
        None, ge=1, validation_alias=_env("model_count", "ONESEEK_MODEL_COUNT")
    )
    # GPUs the pod requested; > 0 makes CUDA with that many devices a pre-flight requirement.
    gpu_count: int = Field(0, ge=0, validation_alias=_env("gpu_count", "ONESEEK_GPU_COUNT"))
    # The Secret the S3 credentials come from (its refs are optional so the pod starts and
    # pre-flight can name a missing Secret); unset when IRSA / workload identity is used.
    credentials_secret: str | None = Field(
        None, validation_alias=_env("credentials_secret", "ONESEEK_CREDENTIALS_SECRET")
    )
    checkpoint_dir: Path | None = Field(
        None, validation_alias=_env("checkpoint_dir", "CHECKPOINT_DIR")
    )
    work_dir: Path = Field(Path("./work"), validation_alias=_env("work_dir", "ONESEEK_WORK_DIR"))
    signing_key_file: Path | None = Field(
        None, validation_alias=_env("signing_key_file", "ONESEEK_SIGNING_KEY_FILE")
    )
    image_digest: str | None = Field(
        None, validation_alias=_env("image_digest", "ONESEEK_IMAGE_DIGEST")
    )
    language: str = Field(
        "sv", pattern=r"^[a-z]{2,3}$", validation_alias=_env("language", "ONESEEK_LANGUAGE")
    )
    allow_pickle: bool = Field(False, validation_alias=_env("allow_pickle", "ONESEEK_ALLOW_PICKLE"))
    create_bucket: bool = Field(
        False, validation_alias=_env("create_bucket", "ONESEEK_CREATE_BUCKET")
    )
    # Opt-out for S3 servers that ignore If-None-Match (probed once per bucket): commit
    # anyway, with only a check-then-write guard. Safe only with one certifier at a time.
    allow_unconditional_writes: bool = Field(
        False,
        validation_alias=_env("allow_unconditional_writes", "ONESEEK_ALLOW_UNCONDITIONAL_WRITES"),
    )
    # Reuse a model's adapter from the newest certified run whose per-model inputs equal
    # this run's instead of training it again (oneseek_job.carry; docs/operations.md).
    carry_over: bool = Field(True, validation_alias=_env("carry_over", "ONESEEK_CARRY_OVER"))
    # Only ever passed to the S3 client; SecretStr keeps it out of reprs and logs.
    aws_access_key_id: SecretStr | None = Field(
        None, validation_alias=_env("aws_access_key_id", "AWS_ACCESS_KEY_ID")
    )
    aws_secret_access_key: SecretStr | None = Field(
        None, validation_alias=_env("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY")
    )
    # Telemetry (oneseek_job.telemetry): TensorBoard events are published with every run;
    # Prometheus and MLflow only when asked for.
    tensorboard: bool = Field(True, validation_alias=_env("tensorboard", "ONESEEK_TENSORBOARD"))
    metrics_port: int | None = Field(
        None, ge=1, le=65535, validation_alias=_env("metrics_port", "ONESEEK_METRICS_PORT")
    )
    mlflow_tracking_uri: str | None = Field(
        None, validation_alias=_env("mlflow_tracking_uri", "MLFLOW_TRACKING_URI")
    )
    lora: LoraSettings = Field(default_factory=LoraSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)

    @field_validator("base_models", mode="before")
    @classmethod
    def _split_base_models(cls, value: Any) -> Any:
        # The admin UI writes a comma-separated string; blanks between commas are dropped
        # here and an all-blank list is reported by the command that needs models.
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator(
        "models_dir",
        "dataset",
        "artifacts_uri",
        "s3_endpoint_url",
        "checkpoint_dir",
        "work_dir",
        "signing_key_file",
        mode="before",
    )
    @classmethod
    def _check_path_text(cls, value: Any) -> Any:
        # Refused, not stripped: " s3://b/p" silently became a relative directory once.
        if value is None:
            return value
        text = str(value)
        if text != text.strip():
            raise ValueError("has leading or trailing whitespace; remove it (it is not stripped)")
        if _CONTROL.search(text):
            raise ValueError("contains control characters (a newline, a tab, an escape)")
        if not text:
            raise ValueError("is empty")
        return value

    @field_validator("s3_endpoint_url")
    @classmethod
    def _check_endpoint_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError as error:
            raise ValueError(f"is not a valid URL ({error})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s)://host[:port] URL")
        if port == 0:
            raise ValueError("port 0 is not a port")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials; use AWS_ACCESS_KEY_ID/SECRET")
        return value

    @field_validator("run_id")
    @classmethod
    def _check_run_id(cls, value: str) -> str:
        if not RUN_ID_PATTERN.fullmatch(value):
            raise ValueError(
                "must be 1-128 characters of letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("model_version")
    @classmethod
    def _check_version(cls, value: str) -> str:
        if not VERSION_PATTERN.fullmatch(value):
            raise ValueError("must look like 1.0 or 2.1.3 (up to 4 numbers of 1-6 digits)")
        return value

    @property
    def model_selector(self) -> tuple[str, int | None]:
        """(setting, index) naming the one model this pod trains; index None: all of them.

        ONESEEK_MODEL_INDEX wins; else JOB_COMPLETION_INDEX (an Indexed Job with one pod
        per model).
        """
        if self.model_index is not None:
            return "ONESEEK_MODEL_INDEX", self.model_index
        return "JOB_COMPLETION_INDEX", self.job_completion_index

    @property
    def checkpoint_root(self) -> Path:
        """Where resumable state lives: CHECKPOINT_DIR, else under the work dir."""
        return self.checkpoint_dir or self.work_dir / "checkpoints"

    @property
    def telemetry_dir(self) -> Path:
        """TensorBoard events and progress history of this run, beside its checkpoints so a
        resumed model keeps the curve from before the preemption."""
        return self.checkpoint_root / self.run_id / ".telemetry"


_ENV_NAMES: dict[str, str] = {
    "base_models": "BASE_MODELS",
    "models_dir": "MODELS_DIR",
    "dataset": "DATASET",
    "artifacts_uri": "ARTIFACTS_URI",
    "s3_endpoint_url": "S3_ENDPOINT_URL",
    "aws_region": "AWS_REGION",
    "run_id": "RUN_ID",
    "model_version": "MODEL_VERSION",
    "job_completion_index": "JOB_COMPLETION_INDEX",
    "model_index": "ONESEEK_MODEL_INDEX",
    "model_count": "ONESEEK_MODEL_COUNT",
    "gpu_count": "ONESEEK_GPU_COUNT",
    "credentials_secret": "ONESEEK_CREDENTIALS_SECRET",
    "checkpoint_dir": "CHECKPOINT_DIR",
    "work_dir": "ONESEEK_WORK_DIR",
    "signing_key_file": "ONESEEK_SIGNING_KEY_FILE",
    "image_digest": "ONESEEK_IMAGE_DIGEST",
    "language": "ONESEEK_LANGUAGE",
    "allow_pickle": "ONESEEK_ALLOW_PICKLE",
    "create_bucket": "ONESEEK_CREATE_BUCKET",
    "carry_over": "ONESEEK_CARRY_OVER",
    "tensorboard": "ONESEEK_TENSORBOARD",
    "metrics_port": "ONESEEK_METRICS_PORT",
    "mlflow_tracking_uri": "MLFLOW_TRACKING_URI",
}


def _describe(error: ValidationError, prefix: str = "") -> str:
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"]]
    field = loc[0] if loc else "?"
    if prefix:
        name = f"ONESEEK_{'LORA_' if prefix == 'lora' else ''}{field.upper()}"
    else:
        name = _ENV_NAMES.get(field, field.upper())
    value = first.get("input")
    shown = "" if name.startswith("AWS_") or isinstance(value, dict) else f" (got {value!r:.80})"
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{name}: {message}{shown}"


def check_logging_env(level: str | None, log_format: str | None) -> tuple[str, bool | None]:
    """Validate ONESEEK_LOG_LEVEL / ONESEEK_LOG_FORMAT (read before the settings, for logging).

    Returns:
        The level name and ``json`` (True / False / None = by TTY).

    Raises:
        ConfigError: an unknown level or format (``LOUD`` is not a level).
    """
    name = (level or "INFO").strip().upper()
    if name not in LOG_LEVELS:
        raise ConfigError(
            f"ONESEEK_LOG_LEVEL: must be one of {', '.join(LOG_LEVELS)} (got {level!r:.40})"
        )
    fmt = (log_format or "").strip().lower()
    if fmt and fmt not in LOG_FORMATS:
        raise ConfigError(f"ONESEEK_LOG_FORMAT: must be json or console (got {log_format!r:.40})")
    return name, {"json": True, "console": False}.get(fmt)


def load_settings(**overrides: Any) -> JobSettings:
    """Read the environment, apply CLI overrides, validate, or raise one-line ConfigError.

    Args:
        overrides: field values from CLI options; ``None`` values are ignored. Keys
            ``lora`` and ``train`` take dicts of their sub-settings.
    """
    try:
        return _load(overrides)
    except SettingsError as error:
        raise ConfigError(f"invalid environment: {error}") from None


def _load(overrides: dict[str, Any]) -> JobSettings:
    clean = {k: v for k, v in overrides.items() if v is not None}
    lora_over = {k: v for k, v in clean.pop("lora", {}).items() if v is not None}
    train_over = {k: v for k, v in clean.pop("train", {}).items() if v is not None}
    try:
        lora = LoraSettings(**lora_over)
    except ValidationError as error:
        raise ConfigError(_describe(error, "lora")) from None
    try:
        train = TrainSettings(**train_over)
    except ValidationError as error:
        raise ConfigError(_describe(error, "train")) from None
    try:
        return JobSettings(lora=lora, train=train, **clean)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None
