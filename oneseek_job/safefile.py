"""Read small files (keys, configs) without ever blocking on a FIFO or a device.

``Path.read_bytes`` on a FIFO waits for a writer forever; on ``/dev/zero`` it never ends.
Kubernetes mounts Secrets as symlinks into ``..data/``, so symlinks are followed, but
what they lead to must be a regular file of bounded size.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from oneseek_job.errors import InputError

__all__ = ["read_regular_file"]


def read_regular_file(path: Path, *, what: str, limit: int = 1 << 20) -> tuple[bytes, int]:
    """The bytes and the mode bits of a regular file of at most ``limit`` bytes.

    Args:
        path: the file; symlinks are followed.
        what: how error messages name it ("ONESEEK_SIGNING_KEY_FILE").
        limit: refuse larger files.

    Raises:
        InputError: missing, unreadable, not a regular file (FIFO, socket, device,
            directory) or larger than ``limit``.
    """
    try:
        # O_NONBLOCK: opening a FIFO without a writer returns at once instead of waiting.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as error:
        raise InputError(f"{what} {path} cannot be opened: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(
                f"{what} {path} is not a regular file (a FIFO, socket, device or directory)"
            )
        if info.st_size > limit:
            raise InputError(f"{what} {path} is larger than {limit} bytes")
        chunks: list[bytes] = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
    except OSError as error:
        raise InputError(f"{what} {path} cannot be read: {error.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise InputError(f"{what} {path} is larger than {limit} bytes")
    return data, stat.S_IMODE(info.st_mode)
