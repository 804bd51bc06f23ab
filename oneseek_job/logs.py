"""The one structlog setup: JSON lines off a TTY (pod logs), console on a TTY, secrets redacted.

Every event carries ``run_id`` (and ``model``/``job_index`` once bound with
:func:`bind`); the seed's story tags travel as ``tag`` (scan, found, config, mode,
training, upload, certified).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any, TextIO

import structlog

__all__ = ["bind", "configure_logging", "get_logger", "redact_text", "register_secret"]

# Values that must never reach a log line, whatever key they hide under.
_SECRET_VALUES: set[str] = set()
_SECRET_KEYS = re.compile(
    # "token" only as a credential word: train_tokens / tokens_per_second / tokenizer are metrics
    # and paths, and redacting them hid the numbers operators watch.
    r"(secret|password|passwd|token(?!s|izer)|credential|private|signing_key|access_key"
    r"|session_key|auth)",
    re.IGNORECASE,
)
_SECRET_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"),  # AWS access key ids
    re.compile(r"(?i)(aws_secret_access_key|aws_session_token)\s*[=:]\s*\S+"),
    re.compile(r"(?i)(X-Amz-(Credential|Signature|Security-Token))=[^&\s]+"),
    re.compile(r"(?i)([?&](token|access_token|sig|signature|key)=)[^&\s]+"),
    re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"),  # user:password@ in URLs
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
)
REDACTED = "[REDACTED]"


def register_secret(value: str | None) -> None:
    """Remember a secret value (credentials, key material) so no log line can carry it."""
    if value and len(value) >= 4:
        _SECRET_VALUES.add(value)


def redact_text(text: str) -> str:
    """Remove registered secrets and secret-looking substrings from ``text``."""
    for secret in _SECRET_VALUES:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {
            k: REDACTED if _SECRET_KEYS.search(str(k)) else _redact_value(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    if isinstance(value, BaseException):
        return redact_text(str(value))
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: drop values under secret-looking keys, scrub every string."""
    for key in list(event_dict):
        if _SECRET_KEYS.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact_value(event_dict[key])
    return event_dict


def _redact_rendered(_logger: Any, _method: str, rendered: Any) -> Any:
    # Last line of defence: tracebacks are rendered after redact_secrets ran.
    return redact_text(rendered) if isinstance(rendered, str) else rendered


def configure_logging(
    *,
    json: bool | None = None,
    level: str = "INFO",
    stream: TextIO | None = None,
    drop: Callable[[Mapping[str, Any]], bool] | None = None,
) -> None:
    """Configure structlog once for the process.

    Args:
        json: force JSON (True) or console (False); None picks by whether the stream is a TTY.
        level: minimum level name.
        stream: where lines go; stdout by default (pod logs).
        drop: events for which it returns True are not printed (the terminal's progress
            lines show per-step training events instead).
    """
    out = stream or sys.stdout
    use_json = (not out.isatty()) if json is None else json
    shared: list[Any] = [
        *([_Dropper(drop)] if drop is not None else []),
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Iterable[Any]
    if use_json:
        renderer = [
            structlog.processors.dict_tracebacks,
            redact_secrets,
            structlog.processors.JSONRenderer(sort_keys=False),
            _redact_rendered,
        ]
    else:
        renderer = [
            redact_secrets,
            structlog.dev.ConsoleRenderer(colors=out.isatty()),
            _redact_rendered,
        ]
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # Third-party stdlib loggers (botocore, urllib3, transformers) stay quiet unless debugging.
    # Their lines bypass structlog, and botocore's DEBUG output carries the Authorization
    # header (the access key id), so they are redacted too.
    handler = logging.StreamHandler()
    handler.setFormatter(_RedactingFormatter())
    logging.basicConfig(
        level=logging.WARNING if not os.environ.get("ONESEEK_DEBUG") else logging.DEBUG,
        handlers=[handler],
    )


class _Dropper:
    """A processor that drops the events its predicate picks."""

    def __init__(self, predicate: Callable[[Mapping[str, Any]], bool]) -> None:
        self._predicate = predicate

    def __call__(self, _logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
        if self._predicate(event):
            raise structlog.DropEvent
        return event


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def bind(**values: Any) -> None:
    """Bind context (run_id, model, job_index) to every later event of this process."""
    structlog.contextvars.bind_contextvars(**{k: v for k, v in values.items() if v is not None})


def get_logger(name: str | None = None) -> Any:
    """A structlog logger; pass ``tag=`` on events that tell the seed's story."""
    return structlog.get_logger(name) if name else structlog.get_logger()
