"""Artifact stores: one ``Store`` protocol, ``LocalStore`` and ``S3Store``, and the commit protocol.

INTERFACE CONTRACT (other modules rely on exactly this; the storage issue fills in the bodies).
Keys are '/'-separated paths relative to the store root (ARTIFACTS_URI), never starting
with '/', never containing '..'.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = ["AlreadyExists", "ObjectInfo", "Store", "open_store"]


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about one object."""

    key: str
    size: int
    sha256: str  # lowercase hex of the whole object's content


class AlreadyExists(Exception):  # noqa: N818 - mirrors S3's PreconditionFailed
    """A conditional put found the key already present."""


class Store(Protocol):
    """The one storage abstraction; every artifact goes through it."""

    uri: str

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        """Upload a local file; skipped if an object with the same sha256 is already there."""
        ...

    def put_bytes(self, key: str, data: bytes, *, if_none_match: bool = False) -> ObjectInfo:
        """Write bytes; with ``if_none_match`` raise AlreadyExists if the key exists."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """Read a whole (small) object; FileNotFoundError if missing."""
        ...

    def download_file(self, key: str, path: Path) -> None:
        """Stream an object to a local file."""
        ...

    def head(self, key: str) -> ObjectInfo | None:
        """Size and sha256 of an object, or None if it does not exist."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, sorted by key."""
        ...

    def copy(self, src: str, dst: str) -> None:
        """Server-side copy (S3 CopyObject; local: hard link or copy + rename)."""
        ...


def open_store(uri: str, **options: object) -> Store:
    """``s3://bucket/prefix`` → S3Store, anything else → LocalStore (a directory)."""
    raise NotImplementedError
