"""Domain exceptions and the exit codes the Job's podFailurePolicy keys on.

Kept in its own module (as structlog does with ``exceptions.py``) so every layer can raise
them without import loops. ``cli.main`` maps each to one line on stderr and its exit code.
"""

from __future__ import annotations

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_PREEMPTED",
    "EXIT_RESOLUTION",
    "ConfigError",
    "InputError",
    "JobError",
    "Preempted",
    "ResolutionError",
    "StorageError",
    "VerificationError",
]

EXIT_OK = 0
EXIT_FAILED = 1  # unexpected or transient: the Job retries within backoffLimit
EXIT_BAD_INPUT = 2  # bad configuration or input: FailJob / FailIndex, retrying cannot help
EXIT_RESOLUTION = 3  # a BASE_MODELS name did not resolve to exactly one model
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpoint saved, a retry resumes


class JobError(Exception):
    """Base of every error the CLI turns into one line and an exit code."""

    exit_code: int = EXIT_FAILED


class ConfigError(JobError):
    """A setting is missing or has a value that is not allowed."""

    exit_code = EXIT_BAD_INPUT


class InputError(JobError):
    """An input (dataset, model files, artifacts location) cannot be used as given."""

    exit_code = EXIT_BAD_INPUT


class ResolutionError(JobError):
    """A requested base model matched no model, or more than one."""

    exit_code = EXIT_RESOLUTION


class StorageError(JobError):
    """The artifact store failed after retries; the run stays resumable."""

    exit_code = EXIT_FAILED


class VerificationError(JobError):
    """A published run does not verify (tampered, incomplete or unsigned when required)."""

    exit_code = EXIT_FAILED


class Preempted(JobError):  # noqa: N818 - it is a signal, not a failure
    """SIGTERM arrived; a checkpoint was saved and a retry of the Job resumes from it."""

    exit_code = EXIT_PREEMPTED
