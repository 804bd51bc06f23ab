"""SHA-256 of bytes and of files (streamed): the one hashing helper every module uses.

Its own module, below storage and provenance, so both can use it without an import loop.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["sha256_bytes", "sha256_file"]

_DEFAULT_CHUNK = 1024 * 1024


def sha256_bytes(data: bytes) -> str:
    """Lowercase hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = _DEFAULT_CHUNK) -> str:
    """Lowercase hex SHA-256 of a file, streamed in ``chunk``-byte reads (never whole in memory).

    Args:
        path: the file.
        chunk: read size in bytes; hashlib releases the GIL on big updates, so hashing in a
            background thread overlaps with other work.

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    with Path(path).open("rb", buffering=0) as handle:
        while n := handle.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()
