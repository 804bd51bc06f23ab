"""Domain exceptions and the exit codes the Job's podFailurePolicy keys on.

Kept in its own module (as structlog does with ``exceptions.py``) so every layer can raise
them without import loops. ``cli.main`` maps each to one line on stderr and its exit code.
"""

from __future__ import annotations

import errno

__all__ = [
    "BAD_INPUT_ERRNOS",
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_JOB_SHAPE",
    "EXIT_OK",
    "EXIT_PREEMPTED",
    "EXIT_RESOLUTION",
    "TRANSIENT_ERRNOS",
    "ConfigError",
    "InputError",
    "IntegrityError",
    "JobError",
    "JobShapeError",
    "Preempted",
    "ResolutionError",
    "RunConflictError",
    "StorageError",
    "TransientError",
    "UnsafePathError",
    "VerificationError",
    "exit_code_for_os_error",
]

EXIT_OK = 0
EXIT_FAILED = 1  # unexpected or transient: the Job retries within backoffLimit
EXIT_BAD_INPUT = 2  # bad configuration or input: FailJob / FailIndex, retrying cannot help
EXIT_RESOLUTION = 3  # a BASE_MODELS name did not resolve to exactly one model
EXIT_JOB_SHAPE = 4  # the Job was made for another model count: FailJob, every index would fail
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


class JobShapeError(JobError):
    """The Job was rendered for another number of models than BASE_MODELS holds.

    Every index of the Job fails the same way, so the Job's podFailurePolicy fails the
    whole Job at once (FailJob) instead of failing or finishing indices one by one.
    """

    exit_code = EXIT_JOB_SHAPE


class StorageError(JobError):
    """The artifact store failed after retries; the run stays resumable."""

    exit_code = EXIT_FAILED


class IntegrityError(StorageError):
    """Stored bytes differ from what was written or expected (damaged in transit, changed in
    place). A writer retries (exit 1: the upload is redone); ``verify`` reports it as a failed
    check instead."""


class UnsafePathError(IntegrityError):
    """A store path goes through a symlink: never followed, for reading or writing. Exit 2:
    a planted link does not go away by retrying."""

    exit_code = EXIT_BAD_INPUT


class VerificationError(JobError):
    """A published run does not verify (tampered, incomplete or unsigned when required).

    Exit 2, never 1: re-running verify on the same bytes cannot change the verdict.
    """

    exit_code = EXIT_BAD_INPUT


class RunConflictError(JobError):
    """The RUN_ID is bound to other inputs, or its run was committed with other content.

    Exit 2: a retry with the same settings meets the same run; change RUN_ID or the inputs.
    """

    exit_code = EXIT_BAD_INPUT


class Preempted(JobError):  # noqa: N818 - it is a signal, not a failure
    """SIGTERM arrived; a checkpoint was saved and a retry of the Job resumes from it."""

    exit_code = EXIT_PREEMPTED


class TransientError(JobError):
    """A condition that can pass on retry: network, 5xx, throttling, DNS EAI_AGAIN, EIO/ESTALE."""

    exit_code = EXIT_FAILED


# What an OSError means for the Job (docs/operations.md, "Exit codes"). Transient: the same
# call can succeed seconds later (an NFS server failing over, a flaky network path).
TRANSIENT_ERRNOS = frozenset(
    {
        errno.EIO,
        errno.ESTALE,
        errno.ETIMEDOUT,
        errno.EAGAIN,
        errno.EINTR,
        errno.EBUSY,
        errno.ENOLCK,
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.ECONNABORTED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EPIPE,
    }
)
# Bad input: the same volume answers the same way on every retry of the Job. A full disk
# (ENOSPC, EDQUOT, EFBIG) is here on purpose: Job retries come seconds apart, long before an
# operator frees space, so FailJob says it at once; re-applying with the same RUN_ID after
# the fix resumes from the last checkpoint.
BAD_INPUT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EFBIG,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENAMETOOLONG,
        errno.ELOOP,
        errno.EEXIST,
        errno.ENXIO,
    }
)


def exit_code_for_os_error(error: OSError) -> int:
    """Exit code of an OSError: 2 for BAD_INPUT_ERRNOS, else 1 (transient or unexpected)."""
    return EXIT_BAD_INPUT if error.errno in BAD_INPUT_ERRNOS else EXIT_FAILED
