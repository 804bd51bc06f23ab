"""Process signals: SIGTERM (Kubernetes' eviction/preemption notice) sets a stop flag.

The handler is installed once, by ``cli.main()`` at process start, so a SIGTERM that
arrives while the job is still discovering models or checking S3 is recorded instead of
being dropped (a container's PID 1 has no default SIGTERM action). Library code never
installs handlers; the training recipe polls the :class:`StopFlag` it is given.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["STOP", "StopFlag", "install_sigterm_handler"]


class StopFlag:
    """A thread-safe "please checkpoint and stop" request."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        """Request a checkpoint-and-stop at the next step."""
        self._event.set()

    def clear(self) -> None:
        """Forget an earlier request (tests, or a caller that handled it)."""
        self._event.clear()

    @property
    def is_set(self) -> bool:
        """Whether a stop was requested."""
        return self._event.is_set()


# The process-wide flag the SIGTERM handler sets; the recipe's default.
STOP = StopFlag()


def install_sigterm_handler(flag: StopFlag = STOP) -> bool:
    """Make SIGTERM set ``flag``. Returns False (and installs nothing) off the main thread.

    Args:
        flag: the flag to set; the process-wide :data:`STOP` by default.
    """
    if threading.current_thread() is not threading.main_thread():
        return False

    def _on_sigterm(signum: int, _frame: Any) -> None:
        # Only set the flag: the handler runs between bytecodes of the main thread, which
        # may be inside a log write holding structlog's (non-reentrant) stream lock, so
        # logging here would deadlock. Whoever polls the flag logs.
        flag.set()

    signal.signal(signal.SIGTERM, _on_sigterm)
    return True
