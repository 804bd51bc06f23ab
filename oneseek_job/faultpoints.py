"""Named step boundaries of the publish path, where the crash tests kill the process.

``cli.main`` arms one from ``ONESEEK_CRASH_AT=<step>[#n]`` (the n-th time the step is
reached, default 1); unarmed, :func:`reached` is a counter increment. The steps: ``staged``
(after each uploaded file), ``done`` (after a done marker), ``committed`` (after
MANIFEST.json), ``materialized`` (after each file created under the run), ``promoted``
(after each copy to the latest paths), ``before_current`` (just before CURRENT).
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["arm", "reached"]

_lock = threading.Lock()
_armed: tuple[str, int] | None = None
_counts: dict[str, int] = {}


def arm(spec: str) -> None:
    """Kill this process with SIGKILL at ``<step>[#n]`` (a test hook)."""
    global _armed
    step, _, nth = spec.partition("#")
    _armed = (step.strip(), int(nth or 1))


def reached(step: str) -> None:
    """Mark a step boundary; SIGKILL here if this is the armed one."""
    if _armed is None:
        return
    with _lock:
        _counts[step] = _counts.get(step, 0) + 1
        hit = _armed == (step, _counts[step])
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
