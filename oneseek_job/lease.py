"""One writer per (run, model): a lease file in the model's checkpoint directory.

Two pods can hold one (run, model) at once: a new Job (or a ``--force-replace``d one)
started while the old pod still drains its grace period, or an operator re-running a Job by
hand. Both would resume from and write the same checkpoints. The lease makes the second one
wait until the first has saved its checkpoint and let go.

The lease is a file created with ``O_CREAT | O_EXCL`` (atomic on local file systems and on
NFSv3+). Its holder rewrites it (a heartbeat) every :data:`HEARTBEAT_S`; a lease whose
modification time is older than :data:`STALE_S` belongs to a pod that died without letting
go (SIGKILL, node loss) and is taken over; so is, at once, a lease whose holder ran on this
very host and whose process is gone (a local re-run after a crash). Taking over renames
the stale file away first: only one of two pods racing for a stale lease wins that rename.
Times are compared on the file system's clock (the file's mtime against a probe file
written just now), so skew between nodes does not matter.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from oneseek_job.errors import TransientError
from oneseek_job.logs import get_logger

__all__ = ["HEARTBEAT_S", "LEASE_FILE", "STALE_S", "WAIT_S", "Lease", "hold_lease", "writer_id"]

log = get_logger(__name__)

LEASE_FILE = ".lease"
HEARTBEAT_S = 30.0
# A holder that missed this many seconds of heartbeats is gone.
STALE_S = 180.0
# How long a second writer waits before giving up (exit 1: the Job retries it): longer than
# the chart's 300 s grace period, in which the first writer saves its checkpoint and exits.
WAIT_S = 420.0
POLL_S = 2.0

_WRITER = f"{socket.gethostname()}-{secrets.token_hex(4)}"


def writer_id() -> str:
    """This process's identity: host (the pod name in Kubernetes) plus a random part.

    Never the PID alone: every container's entry point is PID 1.
    """
    return _WRITER


@dataclass
class Lease:
    """A held lease; :meth:`release` (or leaving :func:`hold_lease`) lets it go."""

    path: Path
    holder: str
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _beat: threading.Thread | None = field(default=None, repr=False)

    def start_heartbeat(self, every: float = HEARTBEAT_S) -> None:
        def beat() -> None:
            while not self._stop.wait(every):
                try:
                    _write(self.path, self.holder, create=False)
                except OSError as error:  # the run dir was removed, or the volume hiccups
                    log.warning("lease_heartbeat_failed", lease=str(self.path), error=str(error))

        self._beat = threading.Thread(target=beat, name="lease-heartbeat", daemon=True)
        self._beat.start()

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        if _holder(self.path) == self.holder:
            with contextlib.suppress(OSError):
                self.path.unlink()


def _write(path: Path, holder: str, *, create: bool) -> None:
    body = json.dumps(
        {
            "holder": holder,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "writer": writer_id(),
            "heartbeat": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    ).encode()
    flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create else os.O_TRUNC)
    fd = os.open(path, flags, 0o644)
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _holder(path: Path) -> str | None:
    holder = _read(path).get("holder")
    return holder if isinstance(holder, str) else None


def _gone_from_this_host(path: Path) -> bool:
    """The holder ran here and its process no longer exists (or we are its successor in
    the same container, where every entry point is PID 1)."""
    data = _read(path)
    pid = data.get("pid")
    if data.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    if data.get("writer") == writer_id():
        return False  # this very process
    if pid == os.getpid():
        return True  # an earlier process of this container: PID 1 again
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _age(path: Path) -> float | None:
    """Seconds since the lease's last heartbeat, on the file system's own clock."""
    probe = path.with_name(f".clock-{secrets.token_hex(6)}")
    try:
        mtime = path.stat().st_mtime
        probe.write_bytes(b"")
        now = probe.stat().st_mtime
    except FileNotFoundError:
        return None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return now - mtime


def _try_acquire(path: Path, holder: str, stale_s: float) -> bool:
    try:
        _write(path, holder, create=True)
        return True
    except FileExistsError:
        pass
    age = _age(path)
    if age is None or (age <= stale_s and not _gone_from_this_host(path)):
        return False
    # Stale: move it aside; of two pods racing here, exactly one rename succeeds.
    aside = path.with_name(f"{LEASE_FILE}.stale-{secrets.token_hex(6)}")
    try:
        path.rename(aside)
    except FileNotFoundError:
        return False
    log.warning(
        "lease_taken_over",
        lease=str(path),
        previous=_holder(aside),
        silent_for_s=round(age, 1),
    )
    with contextlib.suppress(OSError):
        aside.unlink()
    try:
        _write(path, holder, create=True)
        return True
    except FileExistsError:
        return False


@contextlib.contextmanager
def hold_lease(
    directory: Path,
    *,
    what: str,
    holder: str | None = None,
    wait_s: float = WAIT_S,
    stale_s: float = STALE_S,
    heartbeat_s: float = HEARTBEAT_S,
) -> Iterator[Lease]:
    """Hold the lease of ``directory`` for the ``with`` block, waiting for another holder.

    Args:
        directory: the (run, model) checkpoint directory; created if missing.
        what: how messages name it ("run-1/kb-llama").
        holder: the writer's identity; default :func:`writer_id`.
        wait_s: give up after waiting this long for a live holder.
        stale_s: a lease not rewritten for this long is taken over.
        heartbeat_s: how often the holder rewrites it.

    Raises:
        TransientError: another live writer held it for ``wait_s`` (exit 1: retried).
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LEASE_FILE
    me = holder or writer_id()
    deadline = time.monotonic() + wait_s
    waited = False
    while not _try_acquire(path, me, stale_s):
        if not waited:
            log.warning("lease_busy", lease=str(path), holder=_holder(path), waiting_s=wait_s)
            waited = True
        if time.monotonic() >= deadline:
            raise TransientError(
                f"{what} is being trained by {_holder(path) or 'another pod'} (lease "
                f"{path}); waited {wait_s:.0f} s, retrying later"
            )
        time.sleep(POLL_S)
    lease = Lease(path, me)
    lease.start_heartbeat(heartbeat_s)
    if waited:
        log.info("lease_acquired", lease=str(path))
    try:
        yield lease
    finally:
        lease.release()
