"""Named step boundaries of the publish path, where the crash tests kill the process.

``cli.main`` arms one from ``ONESEEK_CRASH_AT=<step>[#n]`` (the n-th time the step is
reached, default 1); unarmed, :func:`reached` returns at once. The steps, in the order a
run reaches them (:data:`STEPS`):

- ``claimed``: after the run's identity.json is written (nothing staged yet);
- ``partial``: after a file's bytes are partly stored but before the object exists (S3:
  once per multipart upload, after its first part's bytes are sent; local: after the temp
  file is written, before the rename);
- ``staged``: after each file that lands in the staging area (model files as each upload
  finishes while others are in flight, run documents, the MANIFEST signature);
- ``done``: after a done marker;
- ``committed``: after MANIFEST.json;
- ``materialized``: after each file created under the run (MANIFEST.json.sig last);
- ``promoted``: after each copy to the latest paths;
- ``pruned``: after each stale file of an earlier run is deleted from the latest paths;
- ``before_current``: just before CURRENT;
- ``current``: after CURRENT, before the staging area is removed;
- ``unstaged``: after each staging object is deleted.
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["STEPS", "arm", "armed", "reached"]

STEPS = (
    "claimed",
    "partial",
    "staged",
    "done",
    "committed",
    "materialized",
    "promoted",
    "pruned",
    "before_current",
    "current",
    "unstaged",
)

_lock = threading.Lock()
_armed: tuple[str, int] | None = None
_counts: dict[str, int] = {}


def arm(spec: str) -> None:
    """Kill this process with SIGKILL at ``<step>[#n]`` (a test hook).

    Raises:
        ValueError: ``step`` is not one of :data:`STEPS` (a typo would never fire).
    """
    global _armed
    step, _, nth = spec.partition("#")
    if step.strip() not in STEPS:
        raise ValueError(f"unknown fault point {step!r}; one of {', '.join(STEPS)}")
    _armed = (step.strip(), int(nth or 1))


def armed() -> bool:
    """Whether a fault point is armed (callers skip extra bookkeeping when not)."""
    return _armed is not None


def reached(step: str) -> None:
    """Mark a step boundary; SIGKILL here if this is the armed one."""
    if _armed is None:
        return
    with _lock:
        _counts[step] = _counts.get(step, 0) + 1
        hit = _armed == (step, _counts[step])
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
