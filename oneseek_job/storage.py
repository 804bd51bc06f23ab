"""Artifact stores: one ``Store`` protocol, ``LocalStore`` and ``S3Store`` — bytes and keys only.

Nothing here knows what a run is (the commit protocol is ``certify``'s). Keys are
'/'-separated paths relative to the store root (ARTIFACTS_URI), never starting with '/',
never containing '..'.

Guarantees both stores give:
- An object is either absent, the previous complete version, or the new complete version:
  local writes go to a temp file in the same directory, are fsynced and renamed; S3 objects
  appear only when PutObject / CompleteMultipartUpload succeeds; every body carries its
  SHA-256 and every part its CRC32 (computed in the one hashing pass over the file,
  ``checksums``), which the server verifies.
- ``head`` returns the whole object's SHA-256 (S3: our ``x-amz-meta-sha256``, checked after
  upload against the server's own checksum or ETag), so ``put_file`` skips an object
  already stored with the same content and a re-run after a crash uploads only what is missing.
- ``put_bytes(..., if_none_match=True)`` lets exactly one of several racing writers win. An S3
  server's support for it (and for checksum validation) is probed once per bucket, not
  assumed (:class:`Capabilities`); where checksums are not validated, every upload is checked
  against a digest the server computed from the bytes it received (a multipart object's
  CRC32 where the probe saw the server compute it, else the MD5 ETag: for multipart the MD5
  of the part MD5s), and read back and re-hashed where neither is the one we expect.
- Bodies are not SHA-256-hashed a second time for the request signature (botocore does that
  over plain http unless told not to): the signed checksum header already covers them.
- ``LocalStore`` never follows a symlink below its root, for reading or writing.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import hashlib
import ipaddress
import os
import re
import secrets
import socket
import stat
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlsplit

from oneseek_job import faultpoints
from oneseek_job.checksums import FileDigests, file_digests
from oneseek_job.digests import sha256_bytes, sha256_file
from oneseek_job.errors import (
    ConfigError,
    InputError,
    IntegrityError,
    StorageError,
    TransientError,
    UnsafePathError,
)
from oneseek_job.logs import get_logger, redact_text, register_secret

if TYPE_CHECKING:
    from oneseek_job.config import JobSettings

__all__ = [
    "AlreadyExists",
    "Capabilities",
    "LocalStore",
    "ObjectInfo",
    "PutResult",
    "S3Store",
    "Store",
    "check_writable",
    "open_store",
    "parse_s3_uri",
    "store_from_settings",
    "upload_files",
    "upload_tree",
]

log = get_logger(__name__)

MiB = 1024 * 1024
_HASH_BLOCK = 4 * MiB
_PROBE_BODY = b"oneseek capability probe\n"
_WRONG_CRC32 = base64.b64encode((zlib.crc32(_PROBE_BODY) ^ 1).to_bytes(4, "big")).decode()
# S3 limits: CopyObject handles sources up to 5 GiB; beyond that a multipart copy is needed.
_COPY_OBJECT_LIMIT = 5 * 1024 * MiB
_MAX_PARTS = 10_000
_MIN_PART = 5 * MiB

# Multipart tuning: `python -m bench.upload --size-mib 512 --repeat 2 --sweep` (4 x 128 MiB +
# 16 x 64 KiB files, loopback servers, 2-core VM, quiet, 2026-11-30 15:14 UTC;
# bench/results/upload_sweep.json): each cell timed twice, interleaved with boto3
# upload_file defaults; speed relative to that baseline's median, part size x concurrency:
#            SeaweedFS               moto
#            conc 2  conc 4  conc 8  conc 2  conc 4  conc 8
#   8 MiB     0.98    0.95    0.94    1.12    1.05    0.98
#  16 MiB     0.99    0.91    0.94    1.03    1.11    1.01
#  32 MiB     0.97    0.97    0.89    0.88    1.06    0.99
#  64 MiB     0.99    1.00    0.93    0.91    0.91    0.90
# Two samples per cell leave +-10 % noise: SeaweedFS (about 85 % of both cores go to the
# server) shows no preference; moto slows from 32 MiB parts and with 8 in flight (its GIL);
# interleaved head-to-heads of 16 x 4 against 8 x 8 (the previous default) at 512 MiB gave
# 1.09 vs 1.06 (SeaweedFS) and 1.11-1.14 vs 0.97 (moto). 16 MiB x 4 keeps the 64 MiB in
# flight of 8 x 8 (what a real network rewards) with half the requests.
DEFAULT_PART_SIZE = 16 * MiB
DEFAULT_CONCURRENCY = 4
DEFAULT_MULTIPART_THRESHOLD = 16 * MiB
DEFAULT_MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about one object."""

    key: str
    size: int
    sha256: str  # lowercase hex of the whole object's content


@dataclass(frozen=True)
class PutResult:
    """Outcome of one file upload: the stored object, and whether the upload was skipped."""

    info: ObjectInfo
    skipped: bool
    seconds: float


class AlreadyExists(Exception):  # noqa: N818 - mirrors S3's PreconditionFailed
    """A conditional put found the key already present."""


@dataclass(frozen=True)
class Capabilities:
    """What a store's server was seen to enforce (probed once per bucket per process)."""

    conditional_put: bool  # If-None-Match: * on an existing key is refused (412)
    # a body that does not match its SHA-256 checksum, and a part that does not match its
    # CRC32, are refused
    checksum_validation: bool
    # a multipart object's CRC32 is the server's own, computed from the bytes it stored (not
    # the one a client sent): true wherever checksums are validated
    checksum_computed: bool


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

    def list_keys(self, prefix: str) -> Sequence[str]:
        """The keys of :meth:`list`, without reading any object (no HEAD, no hashing)."""
        ...

    def copy(self, src: str, dst: str, *, if_none_match: bool = False) -> None:
        """Server-side copy (S3 CopyObject; local: hard link or copy + rename); with
        ``if_none_match`` raise AlreadyExists if ``dst`` exists."""
        ...

    def delete(self, key: str) -> None:
        """Remove an object (absent is fine)."""
        ...

    def cleanup(self, prefix: str) -> int:
        """Remove leftovers of killed writers under ``prefix`` (temp files, unfinished
        multipart uploads); returns how many."""
        ...


@runtime_checkable
class _ReportingStore(Protocol):
    # Both stores here implement it; upload_tree uses it to log skipped vs uploaded files.
    def upload(self, key: str, path: Path) -> PutResult: ...


# --------------------------------------------------------------------------------------------
# helpers


# How often a local write is redone when a concurrent cleanup removed its directory or temp.
_VANISHED_RETRIES = 3


class _ObjectGoneError(StorageError):
    """The object was listed or HEADed a moment ago and is gone now (a retry sees why)."""


def _check_key(key: str) -> str:
    if (
        not key
        or key.startswith("/")
        or "\\" in key
        or "\x00" in key
        or any(part in {"", ".", ".."} for part in key.rstrip("/").split("/"))
    ):
        raise ValueError(f"invalid store key {key!r}: '/'-separated, relative, no '..'")
    return key


def _check_prefix(prefix: str) -> str:
    if prefix:
        _check_key(prefix.rstrip("/") or "x")
        if prefix.startswith("/"):
            raise ValueError(f"invalid store prefix {prefix!r}")
    return prefix


def _etag_matches(etag: object, expected: str | None) -> bool:
    """Whether a server's ETag equals the MD5-based one we computed for the same bytes."""
    return bool(expected) and str(etag or "").strip('"').lower() == expected


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_TMP_MARK = ".oneseek-tmp-"


def _is_temp_name(name: str) -> bool:
    return _TMP_MARK in name


# --------------------------------------------------------------------------------------------
# LocalStore


class LocalStore:
    """A directory on local disk (or a mounted volume) as a store.

    Writes are atomic: temp file in the destination directory, fsync, rename, fsync of the
    directory. Conditional puts link the finished temp file into place (``link`` fails if the
    name exists), so exactly one writer wins and the winner's content is complete when visible.
    SHA-256 is computed on ``head`` (no sidecar files to get out of sync).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        """The file of ``key``; refuses a path through a symlink (read or write)."""
        path = self.root / _check_key(key)
        current = self.root
        for part in Path(key).parts:
            current = current / part
            if current.is_symlink():
                raise UnsafePathError(
                    f"{self.uri}/{key}: {current.relative_to(self.root)} is a symlink; "
                    "the store never follows symlinks"
                )
        return path

    def _temp_for(self, target: Path) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        return target.parent / f".{target.name}{_TMP_MARK}{secrets.token_hex(6)}"

    def _write_temp(self, target: Path, data: bytes | Path) -> Path:
        tmp = self._temp_for(target)
        try:
            with tmp.open("xb") as out:
                if isinstance(data, bytes):
                    out.write(data)
                else:
                    with data.open("rb") as src:
                        while block := src.read(_HASH_BLOCK):
                            out.write(block)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _write(
        self, target: Path, data: bytes | Path, *, exclusive: bool, fault: str | None = None
    ) -> None:
        """Temp file, then rename (or link, when ``exclusive``) into place.

        A finisher's cleanup of the same prefix may remove this write's new directory or
        its temp file in between (it cannot tell a live writer's temp file from a killed
        one's): the write is then redone, so the outcome is the write or AlreadyExists.
        """
        for attempt in range(1, _VANISHED_RETRIES + 1):
            try:
                tmp = self._write_temp(target, data)
                if fault:
                    faultpoints.reached(fault)
                self._publish(tmp, target, exclusive=exclusive)
                return
            except FileNotFoundError:
                if attempt == _VANISHED_RETRIES:
                    raise

    def _publish(self, tmp: Path, target: Path, *, exclusive: bool) -> None:
        try:
            if exclusive:
                try:
                    os.link(tmp, target)
                except FileExistsError:
                    raise AlreadyExists(str(target)) from None
            else:
                tmp.replace(target)
            _fsync_dir(target.parent)
        finally:
            tmp.unlink(missing_ok=True)

    def upload(self, key: str, path: Path) -> PutResult:
        """Like :meth:`put_file`, also saying whether the copy was skipped."""
        started = time.perf_counter()
        target = self._path(key)
        sha = sha256_file(path)
        size = path.stat().st_size
        existing = self.head(key)
        if existing is not None and existing.sha256 == sha:
            return PutResult(existing, True, time.perf_counter() - started)
        try:
            self._write(target, path, exclusive=False, fault="partial")
        except OSError as error:
            raise StorageError(f"cannot write {target}: {error.strerror or error}") from error
        return PutResult(ObjectInfo(key, size, sha), False, time.perf_counter() - started)

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        """Copy a local file in atomically; skipped if the same content is already there."""
        return self.upload(key, path).info

    def put_bytes(self, key: str, data: bytes, *, if_none_match: bool = False) -> ObjectInfo:
        """Write bytes atomically; with ``if_none_match`` raise AlreadyExists if present."""
        target = self._path(key)
        try:
            self._write(target, data, exclusive=if_none_match)
        except OSError as error:
            raise StorageError(f"cannot write {target}: {error.strerror or error}") from error
        return ObjectInfo(key, len(data), sha256_bytes(data))

    def get_bytes(self, key: str) -> bytes:
        """Read a whole object; FileNotFoundError if missing."""
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise FileNotFoundError(f"{self.uri}/{key}") from None
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise FileNotFoundError(f"{self.uri}/{key}")
            return handle.read()

    def download_file(self, key: str, path: Path) -> None:
        """Copy an object to a local file (atomically at the destination)."""
        source = self._path(key)
        if not source.is_file():
            raise FileNotFoundError(f"{self.uri}/{key}")
        path = Path(path)
        tmp = self._write_temp(path, source)
        tmp.replace(path)

    def head(self, key: str) -> ObjectInfo | None:
        """Size and SHA-256 (computed now) of an object, or None."""
        path = self._path(key)
        try:
            if not path.is_file():
                return None
            return ObjectInfo(key, path.stat().st_size, sha256_file(path))
        except FileNotFoundError:  # removed between the checks
            return None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, sorted by key; temp files skipped."""
        for key in self.list_keys(prefix):
            info = self.head(key)
            if info is not None:
                yield info

    def list_keys(self, prefix: str) -> Sequence[str]:
        """The keys :meth:`list` yields, sorted, without hashing any file."""
        _check_prefix(prefix)
        # Walk only the deepest directory the prefix names, then filter by the full prefix.
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self._path(base_dir) if base_dir else self.root
        if not start.is_dir():
            return []
        keys: list[str] = []
        for dirpath, _dirs, files in os.walk(start):  # does not descend into symlinked dirs
            for name in files:
                if _is_temp_name(name) or (Path(dirpath) / name).is_symlink():
                    continue
                key = (Path(dirpath) / name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def copy(self, src: str, dst: str, *, if_none_match: bool = False) -> None:
        """Hard link (or copy) into a temp name, then rename (or link) to ``dst`` atomically."""
        source, target = self._path(src), self._path(dst)
        if not source.is_file():
            raise FileNotFoundError(f"{self.uri}/{src}")
        # Safe to share the inode: no store write ever modifies a file in place.
        tmp = self._temp_for(target)
        try:
            try:
                os.link(source, tmp)
            except OSError:
                tmp = self._write_temp(target, source)
            self._publish(tmp, target, exclusive=if_none_match)
        except OSError as error:
            raise StorageError(f"cannot copy {src} to {dst}: {error.strerror or error}") from error

    def delete(self, key: str) -> None:
        """Remove an object (absent is fine); never follows a symlink."""
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as error:
            raise StorageError(f"cannot delete {path}: {error.strerror or error}") from error

    def cleanup(self, prefix: str) -> int:
        """Remove temp files of killed writers and empty directories under ``prefix``."""
        _check_prefix(prefix)
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self._path(base_dir) if base_dir else self.root
        if not start.is_dir():
            return 0
        removed = 0
        for dirpath, _dirs, files in os.walk(start, topdown=False):
            directory = Path(dirpath)
            for name in files:
                key = (directory / name).relative_to(self.root).as_posix()
                if _is_temp_name(name) and key.startswith(prefix):
                    (directory / name).unlink(missing_ok=True)
                    removed += 1
            inside = directory.relative_to(self.root).as_posix().startswith(prefix.rstrip("/"))
            if directory != self.root and inside:
                with contextlib.suppress(OSError):  # only empty directories go
                    directory.rmdir()
        return removed

    @property
    def capabilities(self) -> Capabilities:
        """A local directory: link() makes conditional writes exact; no transit to damage."""
        return Capabilities(conditional_put=True, checksum_validation=True, checksum_computed=True)


# --------------------------------------------------------------------------------------------
# S3Store

# RFC-style S3 bucket names (AWS rules; SeaweedFS enforces 3-63 chars too).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

_T = TypeVar("_T")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ``("bucket", "some/prefix/")``.

    Raises:
        ConfigError: the URI is not a valid ``s3://bucket[/prefix]`` (names ARTIFACTS_URI).
    """
    parts = urlsplit(uri)
    if parts.scheme != "s3":
        raise ConfigError(f"ARTIFACTS_URI: {uri!r} is not an s3:// URI")
    bucket = parts.netloc
    if not bucket:
        raise ConfigError("ARTIFACTS_URI: s3:// URI has no bucket; use s3://bucket/prefix")
    if parts.query or parts.fragment or "@" in bucket or ":" in bucket:
        raise ConfigError(
            "ARTIFACTS_URI: use s3://bucket/prefix without credentials, port, query or fragment"
        )
    if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket or _is_ip(bucket):
        raise ConfigError(
            f"ARTIFACTS_URI: {bucket!r} is not a valid bucket name (3-63 characters: lowercase "
            "letters, digits, '.', '-'; starting and ending with a letter or digit)"
        )
    prefix = parts.path.strip("/")
    if prefix:
        if any(seg in {"", ".", ".."} for seg in prefix.split("/")) or "\\" in prefix:
            raise ConfigError(
                f"ARTIFACTS_URI: prefix {prefix!r} must not contain empty, '.' or '..' segments"
            )
        prefix += "/"
    return bucket, prefix


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _error_code(error: Exception) -> tuple[str, int]:
    response = getattr(error, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
}


# S3 error codes of a request the server refused (probe answers).
_REFUSED_CODES = {
    "PreconditionFailed",
    "BadDigest",
    "InvalidDigest",
    "XAmzContentSHA256Mismatch",
    "InvalidRequest",
    "ConditionalRequestConflict",
}
_PROBED: dict[tuple[str, str], Capabilities] = {}
_PROBE_LOCK = threading.Lock()


class S3Store:
    """An S3 bucket + prefix as a store (AWS, MinIO, SeaweedFS, Ceph RGW).

    Args:
        bucket: bucket name.
        prefix: key prefix ('' or ending in '/'); store keys are relative to it.
        client: a boto3 S3 client (path-style addressing and retries configured by the caller;
            :func:`open_store` builds one).
        part_size: multipart chunk size for uploads and managed copies.
        concurrency: parallel part uploads across all files of this store.
        multipart_threshold: files at least this big are uploaded in parts.
        copy_threshold: objects at least this big are copied with a multipart (managed) copy;
            CopyObject itself is limited to 5 GiB.
        allow_unconditional_writes: where the server ignores If-None-Match, fall back to a
            check-then-write instead of refusing (ONESEEK_ALLOW_UNCONDITIONAL_WRITES).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str,
        client: Any,
        *,
        part_size: int = DEFAULT_PART_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        copy_threshold: int = _COPY_OBJECT_LIMIT,
        allow_unconditional_writes: bool = False,
    ) -> None:
        from boto3.s3.transfer import TransferConfig

        if part_size < _MIN_PART:
            raise ValueError("part_size must be at least 5 MiB (S3 minimum)")
        self.bucket = bucket
        self.prefix = _check_prefix(prefix)
        self.client = client
        self.uri = f"s3://{bucket}/{prefix}".rstrip("/")
        self.part_size = part_size
        self.concurrency = concurrency
        self.multipart_threshold = multipart_threshold
        self.copy_threshold = min(copy_threshold, _COPY_OBJECT_LIMIT)
        self.transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=part_size,
            max_concurrency=concurrency,
            # Threads already give parallelism; the CRT path would bypass our checksum settings.
            preferred_transfer_client="classic",
        )
        self._manager: Any = None
        self._parts: ThreadPoolExecutor | None = None
        self._manager_lock = threading.Lock()
        # Files hashed at once, about one per two cores: with several files in flight the
        # next one is hashed while the parts of the previous ones are on the wire, instead
        # of every upload waiting for every hashing pass.
        self._hashing = threading.BoundedSemaphore(max(1, (os.cpu_count() or 2) // 2))
        self.allow_unconditional_writes = allow_unconditional_writes

    # -- plumbing ------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return self.prefix + _check_key(key)

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def _transfer_manager(self) -> Any:
        # One manager (one thread pool) per store: concurrent put_file calls from upload_tree
        # share max_concurrency instead of multiplying it.
        with self._manager_lock:
            if self._manager is None:
                from s3transfer.manager import TransferManager

                self._manager = TransferManager(self.client, self.transfer_config)
            return self._manager

    def _part_pool(self) -> ThreadPoolExecutor:
        # One pool per store: the parts of files uploaded at once share ``concurrency``.
        with self._manager_lock:
            if self._parts is None:
                self._parts = ThreadPoolExecutor(self.concurrency, thread_name_prefix="s3-part")
            return self._parts

    def close(self) -> None:
        """Shut down the transfer threads (idempotent)."""
        with self._manager_lock:
            if self._manager is not None:
                self._manager.shutdown()
                self._manager = None
            if self._parts is not None:
                self._parts.shutdown()
                self._parts = None

    def _call(self, what: str, key: str | None, fn: Callable[[], _T]) -> _T:
        """Run one S3 call; translate failures into ConfigError / StorageError."""
        try:
            return fn()
        except AlreadyExists:
            raise
        except Exception as error:
            raise _translate(error, what, self._where(key) if key else self.uri) from None

    def part_size_for(self, size: int) -> int:
        """The part size s3transfer will use for a file of ``size`` bytes."""
        from s3transfer.utils import ChunksizeAdjuster

        return int(ChunksizeAdjuster().adjust_chunksize(self.part_size, size))

    @property
    def capabilities(self) -> Capabilities:
        """What this bucket's server enforces: probed on first use, once per process."""
        cache_key = (str(self.client.meta.endpoint_url), self.bucket)
        with _PROBE_LOCK:
            known = _PROBED.get(cache_key)
            if known is None:
                known = self._probe()
                _PROBED[cache_key] = known
                log.info(
                    "s3_capabilities",
                    tag="upload",
                    bucket=self.bucket,
                    conditional_put=known.conditional_put,
                    checksum_validation=known.checksum_validation,
                    checksum_computed=known.checksum_computed,
                )
        return known

    def _probe(self) -> Capabilities:
        """Writes under ``<prefix>.oneseek-probe/``, deleted (or aborted) afterwards."""
        base = f"{self.prefix}.oneseek-probe/{secrets.token_hex(8)}"
        uploads: list[tuple[str, str]] = []  # multipart uploads to abort, (key, id)
        try:
            conditional = self._probe_conditional_put(f"{base}-conditional")
            validated = self._probe_checksum_validation(f"{base}-checksum", uploads)
            computed = validated or self._probe_checksum_computed(f"{base}-computed", uploads)
        except Exception as error:  # e.g. credentials that may read but not write: exit 2
            raise _translate(error, "probe", self.uri) from None
        finally:
            for suffix in ("-conditional", "-checksum", "-computed"):
                with contextlib.suppress(Exception):
                    self.client.delete_object(Bucket=self.bucket, Key=base + suffix)
            for key, upload_id in uploads:
                with contextlib.suppress(Exception):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload_id
                    )
        return Capabilities(conditional, validated, computed)

    def _refused(self, write: Callable[[], object]) -> bool:
        """Whether the server refuses a probe write (4xx), rather than storing it."""
        try:
            write()
        except Exception as error:
            code, status = _error_code(error)
            if status in {400, 409, 412} or code in _REFUSED_CODES:
                return True
            raise _translate(error, "probe", self.uri) from None
        return False

    def _probe_conditional_put(self, key: str) -> bool:
        """A second ``If-None-Match: *`` put of one key must be refused."""
        self.client.put_object(Bucket=self.bucket, Key=key, Body=_PROBE_BODY)
        return self._refused(
            lambda: self.client.put_object(
                Bucket=self.bucket, Key=key, Body=_PROBE_BODY, IfNoneMatch="*"
            )
        )

    def _probe_checksum_validation(self, key: str, uploads: list[tuple[str, str]]) -> bool:
        """A body with a wrong SHA-256 and a part with a wrong CRC32 must both be refused."""
        wrong_sha256 = base64.b64encode(hashlib.sha256(b"not the body").digest()).decode()
        if not self._refused(
            lambda: self.client.put_object(
                Bucket=self.bucket, Key=key, Body=_PROBE_BODY, ChecksumSHA256=wrong_sha256
            )
        ):
            return False
        return self._probe_wrong_part(key, uploads) is None

    def _probe_checksum_computed(self, key: str, uploads: list[tuple[str, str]]) -> bool:
        """A server that accepts a wrong part CRC32 may still report the object's CRC32 from
        the bytes it stored: complete a one-part upload whose part carried a wrong CRC32 and
        see which one it reports."""
        accepted = self._probe_wrong_part(key, uploads)
        if accepted is None:
            return False
        upload_id, etag = accepted
        part = {"PartNumber": 1, "ETag": etag, "ChecksumCRC32": _WRONG_CRC32}
        if self._refused(
            lambda: self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": [part]},
            )
        ):
            return False
        reported = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        stored = reported.get("ChecksumCRC32")
        size = len(_PROBE_BODY)
        real = FileDigests("", size, size, (zlib.crc32(_PROBE_BODY),), ())
        return bool(stored) and bool(real.crc32_matches(stored, reported.get("ChecksumType")))

    def _probe_wrong_part(self, key: str, uploads: list[tuple[str, str]]) -> tuple[str, str] | None:
        """Start a CRC32 multipart upload (recorded in ``uploads`` for the abort) and send
        part 1 with a wrong CRC32: None if refused, else (upload id, the part's ETag)."""
        upload_id = str(
            self.client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ChecksumAlgorithm="CRC32"
            )["UploadId"]
        )
        uploads.append((key, upload_id))
        sent: dict[str, Any] = {}
        if self._refused(
            lambda: sent.update(
                self.client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=1,
                    Body=_PROBE_BODY,
                    ChecksumCRC32=_WRONG_CRC32,
                )
            )
        ):
            return None
        return upload_id, str(sent["ETag"])

    def require_conditional_writes(self) -> None:
        """Refuse (exit 2) a server that ignores If-None-Match, unless opted out.

        Raises:
            ConfigError: conditional puts are not enforced and no opt-out is set.
        """
        if self.capabilities.conditional_put or self.allow_unconditional_writes:
            return
        raise ConfigError(
            f"the S3 server behind {self.uri} ignores If-None-Match (probed: a second "
            "conditional put of one key succeeded), so two certifiers could both commit; use "
            "a server that enforces it, or set ONESEEK_ALLOW_UNCONDITIONAL_WRITES=true if only "
            "one certifier ever runs per RUN_ID (see docs/operations.md)"
        )

    # -- Store ---------------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo | None:
        """Size and SHA-256 of an object, or None if it does not exist."""
        full = self._key(key)
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=full, ChecksumMode="ENABLED")
        except Exception as error:
            code, status = _error_code(error)
            if status == 404 or code in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise _translate(error, "head", self._where(key)) from None
        size = int(response["ContentLength"])
        sha = (response.get("Metadata") or {}).get("sha256", "")
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            try:
                sha = self._foreign_sha256(key, response)
            except _ObjectGoneError:  # deleted between HEAD and GET (a racing finisher's cleanup)
                return None
        return ObjectInfo(key, size, sha)

    def _foreign_sha256(self, key: str, response: dict[str, Any]) -> str:
        # An object we did not write: a full-object SHA-256 checksum is as good as ours;
        # otherwise hash the content (rare: only objects put there by other tools).
        checksum = response.get("ChecksumSHA256") or ""
        if checksum and "-" not in checksum and response.get("ChecksumType") != "COMPOSITE":
            return base64.b64decode(checksum).hex()
        return self._content_sha256(key)

    def _content_sha256(self, key: str) -> str:
        """SHA-256 of the stored bytes, read back now (never metadata)."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except Exception as error:
            code, status = _error_code(error)
            if status == 404 or code in {"404", "NoSuchKey", "NotFound"}:
                gone = f"{self._where(key)} disappeared while it was read"
                raise _ObjectGoneError(gone) from None
            raise _translate(error, "read", self._where(key)) from None
        digest = hashlib.sha256()
        for chunk in body.iter_chunks(_HASH_BLOCK):
            digest.update(chunk)
        return digest.hexdigest()

    def _server_evidence(
        self, response: dict[str, Any], digests: FileDigests, multipart: bool
    ) -> bool | None:
        """What the server's own digests say about an object against ``digests``.

        True: a digest the server computed from the bytes it received matches ours; False:
        one contradicts ours; None: nothing conclusive (read the object back). A reported
        checksum counts only where the probe saw the server validate checksums or compute a
        multipart object's CRC32 itself (else it may merely echo what a client sent); an MD5
        ETag counts only when it matches (a different one may be another ETag scheme, e.g.
        SSE-KMS, not damage). Metadata never counts.
        """
        caps = self.capabilities
        kind = response.get("ChecksumType")
        crc32 = str(response.get("ChecksumCRC32") or "")
        sha256 = str(response.get("ChecksumSHA256") or "")
        if multipart and crc32 and caps.checksum_computed:
            matched = digests.crc32_matches(crc32, kind)
            if matched is not None:
                return matched
        full_object = bool(sha256) and "-" not in sha256 and kind != "COMPOSITE"
        if not multipart and full_object and caps.checksum_validation:
            return digests.sha256_matches(sha256)
        if _etag_matches(response.get("ETag"), digests.etag(multipart=multipart)):
            return True
        return None

    def _stored_matches(self, key: str, size: int, digests: FileDigests, multipart: bool) -> bool:
        """Whether the object at ``key`` holds exactly these bytes, by a real digest check
        (:meth:`_server_evidence`, else the object read back and hashed)."""
        try:
            response = self.client.head_object(
                Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED"
            )
        except Exception as error:
            code, status = _error_code(error)
            if status == 404 or code in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise _translate(error, "head", self._where(key)) from None
        if int(response["ContentLength"]) != size:
            return False
        evidence = self._server_evidence(response, digests, multipart)
        if evidence is not None:
            return evidence
        return self._content_sha256(key) == digests.sha256

    def upload(self, key: str, path: Path) -> PutResult:
        """Like :meth:`put_file`, also saying whether the upload was skipped.

        One read pass hashes the file (:func:`~oneseek_job.checksums.file_digests`: the
        whole file's SHA-256 for the metadata; per part its CRC32, sent as the part's
        checksum, and, where the server validates no checksum, its MD5); the upload then sends
        the file's bytes with those checksums, and the stored object is checked against them
        (:meth:`_verify_stored`).
        """
        started = time.perf_counter()
        size = path.stat().st_size
        multipart = size >= self.multipart_threshold
        part_size = self.part_size_for(size) if multipart else max(size, 1)
        caps = self.capabilities
        if multipart:
            with self._hashing:
                # MD5s only where the server's MD5 ETag is the one evidence it gives.
                digests = file_digests(path, part_size, crc32=True, md5=not caps.checksum_computed)
        else:
            digests = file_digests(path, part_size, crc32=False, md5=not caps.checksum_validation)
        if digests.size != size:
            raise StorageError(f"{path} changed while being uploaded; re-run the upload")
        sha = digests.sha256
        if self._stored_matches(key, size, digests, multipart):
            return PutResult(ObjectInfo(key, size, sha), True, time.perf_counter() - started)
        if multipart:
            self._upload_parts(key, path, digests)
        else:
            data = path.read_bytes()
            if sha256_bytes(data) != sha:
                raise StorageError(f"{path} changed while being uploaded; re-run the upload")
            self._put(key, data, sha, if_none_match=False)
        self._verify_stored(key, size, digests, multipart)
        return PutResult(ObjectInfo(key, size, sha), False, time.perf_counter() - started)

    def _upload_parts(self, key: str, path: Path, digests: FileDigests) -> None:
        """A multipart upload, each part with its CRC32 from the hashing pass (a server that
        validates checksums refuses a part whose bytes changed since); an unfinished upload
        is aborted."""
        from s3transfer.utils import ReadFileChunk

        full = self._key(key)
        created = self._call(
            "upload",
            key,
            lambda: self.client.create_multipart_upload(
                Bucket=self.bucket,
                Key=full,
                Metadata={"sha256": digests.sha256},
                # Declared even where the server validates nothing: moto then computes its
                # cheapest checksum, where without one it copies the whole object again for
                # a full-object one.
                ChecksumAlgorithm="CRC32",
            ),
        )
        upload_id = str(created["UploadId"])

        def send(number: int) -> dict[str, Any]:
            offset = (number - 1) * digests.part_size
            length = min(digests.part_size, digests.size - offset)
            checksum = {"ChecksumCRC32": digests.part_crc32_b64(number - 1)}
            body = ReadFileChunk.from_filename(str(path), offset, length, enable_callbacks=False)
            with body:
                response = self.client.upload_part(
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=body,
                    ContentLength=length,
                    **checksum,
                )
            if number == 1:
                faultpoints.reached("partial")
            return {"PartNumber": number, "ETag": response["ETag"], **checksum}

        pool = self._part_pool()
        futures = [pool.submit(send, n) for n in range(1, digests.parts + 1)]
        try:
            parts = [future.result() for future in futures]
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except Exception as error:
            for future in futures:
                future.cancel()
            wait(futures)  # no part may land after the abort
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            raise _translate(error, "upload", self._where(key)) from None

    def _verify_stored(self, key: str, size: int, digests: FileDigests, multipart: bool) -> None:
        """Check the stored object against what we hashed; delete it if it does not match.

        Size and ``sha256`` metadata must be ours, and the server's own digests
        (:meth:`_server_evidence`: its checksum where it validates or computes checksums,
        else its MD5 ETag) must match; where they say nothing the object is read back and
        re-hashed.
        """
        response = self._call(
            "verify",
            key,
            lambda: self.client.head_object(
                Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED"
            ),
        )
        problems = []
        if int(response["ContentLength"]) != size:
            problems.append(f"size {response['ContentLength']} != {size}")
        if (response.get("Metadata") or {}).get("sha256") != digests.sha256:
            problems.append("sha256 metadata differs")
        evidence = self._server_evidence(response, digests, multipart)
        if evidence is False:
            reported = response.get("ChecksumCRC32") or response.get("ChecksumSHA256")
            problems.append(f"the server's checksum {reported} is not the one of the bytes sent")
        if not problems and evidence is None and self._content_sha256(key) != digests.sha256:
            problems.append("content read back does not hash to the uploaded sha256")
        if problems:
            self._call(
                "delete",
                key,
                lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)),
            )
            raise IntegrityError(
                f"uploaded {self._where(key)} does not match the local file "
                f"({'; '.join(problems)}); deleted it, re-run the upload"
            )

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        """Upload a local file (multipart above the threshold); skipped if already stored."""
        return self.upload(key, path).info

    def _put(self, key: str, data: bytes, sha: str, *, if_none_match: bool) -> str:
        """PutObject with the body's SHA-256 checksum; returns the ETag the server reported."""
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._key(key),
            "Body": data,
            "Metadata": {"sha256": sha},
            # Server verifies the body against it and rejects a corrupted upload (BadDigest).
            "ChecksumSHA256": base64.b64encode(bytes.fromhex(sha)).decode(),
        }
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
            if not self.capabilities.conditional_put:
                self.require_conditional_writes()  # refuses unless opted out
                # Opted out: the best a server without conditional puts allows.
                if self.head(key) is not None:
                    raise AlreadyExists(self._where(key))
        for attempt in range(5):
            try:
                return str(self.client.put_object(**kwargs).get("ETag", ""))
            except Exception as error:
                code, status = _error_code(error)
                if if_none_match and (status == 412 or code == "PreconditionFailed"):
                    raise AlreadyExists(self._where(key)) from None
                # AWS answers 409 to a conditional write racing another on the same key;
                # the retry then sees the winner (412).
                if if_none_match and code == "ConditionalRequestConflict" and attempt < 4:
                    time.sleep(0.1 * (attempt + 1))
                    continue
                raise _translate(error, "write", self._where(key)) from None
        raise AssertionError("unreachable: the last attempt returns or raises")

    def put_bytes(self, key: str, data: bytes, *, if_none_match: bool = False) -> ObjectInfo:
        """Write bytes; with ``if_none_match`` raise AlreadyExists if the key exists.

        Where the server does not validate checksums, its ETag must be the body's MD5 (it
        computed it from the bytes it received), else the object is read back and compared.
        """
        sha = sha256_bytes(data)
        etag = self._put(key, data, sha, if_none_match=if_none_match)
        if (
            not self.capabilities.checksum_validation
            and not _etag_matches(etag, hashlib.md5(data, usedforsecurity=False).hexdigest())
            and self._content_sha256(key) != sha
        ):
            if not if_none_match:
                self.delete(key)
            raise IntegrityError(
                f"{self._where(key)} read back does not match what was written (damaged in "
                "transit); re-run"
            )
        return ObjectInfo(key, len(data), sha)

    def get_bytes(self, key: str) -> bytes:
        """Read a whole object, checked against its stored SHA-256; FileNotFoundError if missing."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            data: bytes = response["Body"].read()
        except Exception as error:
            code, status = _error_code(error)
            if status == 404 or code in {"NoSuchKey", "404"}:
                raise FileNotFoundError(self._where(key)) from None
            raise _translate(error, "read", self._where(key)) from None
        expected = (response.get("Metadata") or {}).get("sha256")
        if expected and sha256_bytes(data) != expected:
            raise IntegrityError(f"{self._where(key)} content does not match its recorded sha256")
        return data

    def download_file(self, key: str, path: Path) -> None:
        """Stream an object to ``path`` (via a temp file), checked against its SHA-256."""
        info = self.head(key)
        if info is None:
            raise FileNotFoundError(self._where(key))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}{_TMP_MARK}{secrets.token_hex(6)}"
        try:
            future = self._transfer_manager().download(self.bucket, self._key(key), str(tmp))
            self._call("download", key, future.result)
            if sha256_file(tmp) != info.sha256:
                raise IntegrityError(f"{self._where(key)} content does not match its sha256")
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, sorted by key (one HEAD each)."""
        for key in self.list_keys(prefix):
            info = self.head(key)
            if info is not None:
                yield info

    def list_keys(self, prefix: str) -> Sequence[str]:
        """The keys :meth:`list` yields, sorted: ListObjectsV2 pages only, no HEAD."""
        _check_prefix(prefix)
        full_prefix = self.prefix + prefix

        def collect() -> list[str]:
            keys = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                for item in page.get("Contents", []):
                    key = str(item["Key"])
                    if not key.endswith("/"):  # directory markers some servers return
                        keys.append(key.removeprefix(self.prefix))
            return keys

        return sorted(self._call("list", prefix or None, collect))

    def copy(self, src: str, dst: str, *, if_none_match: bool = False) -> None:
        """Server-side copy keeping the sha256 metadata; skipped if ``dst`` already matches.

        With ``if_none_match`` an existing ``dst`` raises AlreadyExists. CopyObject honours
        no If-None-Match on the servers we test (moto ignores it), so this is a check, then
        the copy: callers use it only where every racing writer copies the same bytes.
        """
        source = self.head(src)
        if source is None:
            raise FileNotFoundError(self._where(src))
        target = self.head(dst)
        if target is not None and if_none_match:
            raise AlreadyExists(self._where(dst))
        if target is not None and target.sha256 == source.sha256:
            return
        copy_source = {"Bucket": self.bucket, "Key": self._key(src)}
        if source.size < self.copy_threshold:
            self._call(
                "copy",
                dst,
                lambda: self.client.copy_object(
                    Bucket=self.bucket,
                    Key=self._key(dst),
                    CopySource=copy_source,
                    MetadataDirective="REPLACE",
                    Metadata={"sha256": source.sha256},
                    ChecksumAlgorithm="SHA256",
                ),
            )
        else:
            # Multipart copy (UploadPartCopy): needed above 5 GiB. Metadata is set explicitly
            # because a multipart copy starts a new upload and does not carry it over.
            future = self._transfer_manager().copy(
                copy_source,
                self.bucket,
                self._key(dst),
                extra_args={"Metadata": {"sha256": source.sha256}, "ChecksumAlgorithm": "SHA256"},
            )
            self._call("copy", dst, future.result)
        copied = self.head(dst)
        if copied is None or copied.sha256 != source.sha256 or copied.size != source.size:
            raise IntegrityError(f"server-side copy to {self._where(dst)} did not verify; re-run")

    def delete(self, key: str) -> None:
        """Remove an object (absent is fine)."""
        self._call(
            "delete", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        )

    def cleanup(self, prefix: str) -> int:
        """Abort unfinished multipart uploads under ``prefix`` (parts of killed uploads)."""
        _check_prefix(prefix)
        full_prefix = self.prefix + prefix

        def abort_all() -> int:
            aborted = 0
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                for upload in page.get("Uploads", []):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
            return aborted

        return self._call("cleanup", prefix or None, abort_all)


def _translate(error: Exception, what: str, where: str) -> Exception:
    """Map a boto3/botocore failure to ConfigError (exit 2) or StorageError (exit 1)."""
    from botocore import exceptions as bx

    if isinstance(error, StorageError | ConfigError):
        return error
    if isinstance(error, bx.NoCredentialsError | bx.PartialCredentialsError):
        return ConfigError(
            "no S3 credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(e.g. from a Secret) or give the pod an IAM role"
        )
    if isinstance(error, bx.ClientError):
        code, status = _error_code(error)
        if code in _CREDENTIAL_CODES:
            return ConfigError(
                f"S3 rejected the credentials ({code}) for {where}; check AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY"
            )
        if code in {"AccessDenied", "AllAccessDisabled", "403"} or status == 403:
            return ConfigError(
                f"access denied to {where} ({what}); check AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY and that they may list, read and write this bucket"
            )
        if code == "NoSuchBucket":
            bucket = where.removeprefix("s3://").split("/", 1)[0]
            return ConfigError(f"bucket {bucket} does not exist; create it or pass --create-bucket")
        if code == "InvalidBucketName":
            return ConfigError(f"ARTIFACTS_URI: the server rejects the bucket name in {where}")
        message = redact_text(str(error.response.get("Error", {}).get("Message", "")))[:200]
        return StorageError(
            f"S3 {what} of {where} failed after retries: {code or status} {message}".rstrip()
            + "; the run is resumable, re-run it"
        )
    if isinstance(error, bx.EndpointConnectionError | bx.ConnectTimeoutError):
        return StorageError(
            f"cannot reach the S3 endpoint for {where} after retries "
            f"({type(error).__name__}); check S3_ENDPOINT_URL or retry, the run is resumable"
        )
    if isinstance(error, bx.BotoCoreError | OSError):
        detail = redact_text(str(error))[:200]
        return StorageError(
            f"S3 {what} of {where} failed after retries ({type(error).__name__}: {detail}); "
            "the run is resumable, re-run it"
        )
    return StorageError(
        f"S3 {what} of {where} failed ({type(error).__name__}); the run is resumable"
    )


# --------------------------------------------------------------------------------------------
# opening a store


def open_store(
    uri: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    create_bucket: bool = False,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    part_size: int = DEFAULT_PART_SIZE,
    concurrency: int = DEFAULT_CONCURRENCY,
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
    allow_unconditional_writes: bool = False,
) -> Store:
    """``s3://bucket/prefix`` → S3Store (checked: reachable, credentials, bucket), else LocalStore.

    Args:
        uri: ARTIFACTS_URI: ``s3://bucket[/prefix]``, ``file:///path`` or a local path.
        endpoint_url: S3_ENDPOINT_URL for S3-compatible servers; None = AWS.
        region: AWS_REGION; None = the standard chain, else us-east-1.
        access_key_id: explicit key id; None = the standard AWS credential chain.
        secret_access_key: explicit secret (with ``access_key_id``).
        create_bucket: create a missing bucket instead of failing (``--create-bucket``).
        max_attempts: botocore attempts per request (standard retry mode).
        part_size: multipart part size; concurrency: parallel parts; multipart_threshold:
            size from which files go up in parts (defaults measured, see bench/upload.py).

    Raises:
        ConfigError: invalid URI or endpoint URL, unknown endpoint host, bad credentials,
            access denied, or a missing bucket without ``create_bucket``.
        StorageError: the endpoint did not answer after retries (transient; exit 1).
    """
    register_secret(access_key_id)
    register_secret(secret_access_key)
    if "://" not in uri:
        if not uri.strip():
            raise ConfigError("ARTIFACTS_URI is empty; use s3://bucket/prefix or a directory")
        return LocalStore(Path(uri).expanduser())
    scheme = uri.split("://", 1)[0].lower()
    if scheme == "file":
        path = urlsplit(uri).path
        if not path:
            raise ConfigError(f"ARTIFACTS_URI: {uri!r} has no path")
        return LocalStore(Path(path))
    if scheme != "s3":
        raise ConfigError(
            f"ARTIFACTS_URI: unsupported scheme {scheme!r}; use s3://bucket/prefix or a "
            "local directory"
        )
    bucket, prefix = parse_s3_uri(uri)
    client = _make_client(endpoint_url, region, access_key_id, secret_access_key, max_attempts)
    store = S3Store(
        bucket,
        prefix,
        client,
        part_size=part_size,
        concurrency=concurrency,
        multipart_threshold=multipart_threshold,
        allow_unconditional_writes=allow_unconditional_writes,
    )
    _check_bucket(store, create_bucket=create_bucket, region=region)
    return store


def check_writable(store: Store) -> None:
    """Fail before training when the store cannot be written safely.

    S3 stores are already checked for reachability, credentials and the bucket by
    :func:`open_store`; here their server is probed (once per bucket) for conditional puts
    and checksum validation. A local directory (a read-only volume, a path under a file)
    would otherwise only fail at upload time, after the GPU hours are spent.

    Raises:
        ConfigError: the directory cannot be created or written, or the S3 server ignores
            If-None-Match and ONESEEK_ALLOW_UNCONDITIONAL_WRITES is not set.
    """
    if isinstance(store, S3Store):
        store.require_conditional_writes()  # probes the bucket once
        return
    if not isinstance(store, LocalStore):
        return
    try:
        store.root.mkdir(parents=True, exist_ok=True)
        probe = store.root / f".write-probe{_TMP_MARK}{secrets.token_hex(6)}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ConfigError(
            f"ARTIFACTS_URI {store.uri} is not writable ({error.strerror or error}); "
            "mount the artifacts volume read-write or point ARTIFACTS_URI elsewhere"
        ) from None


def store_from_settings(settings: JobSettings) -> Store:
    """:func:`open_store` with ARTIFACTS_URI, S3_ENDPOINT_URL, AWS_* and --create-bucket."""
    key_id = settings.aws_access_key_id
    secret = settings.aws_secret_access_key
    return open_store(
        settings.artifacts_uri,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.aws_region,
        access_key_id=key_id.get_secret_value() if key_id else None,
        secret_access_key=secret.get_secret_value() if secret else None,
        create_bucket=settings.create_bucket,
        allow_unconditional_writes=settings.allow_unconditional_writes,
    )


def _check_endpoint(endpoint_url: str) -> None:
    try:
        parts = urlsplit(endpoint_url)
    except ValueError:  # "http://[::1": an unclosed IPv6 bracket
        raise ConfigError("S3_ENDPOINT_URL: not a valid URL") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ConfigError(
            f"S3_ENDPOINT_URL: {redact_text(endpoint_url)!r} is not an http(s)://host[:port] URL"
        )
    try:
        port = parts.port
    except ValueError:
        raise ConfigError("S3_ENDPOINT_URL: the port is not a number") from None
    # A host that does not resolve is a typo, not an outage: fail fast with exit 2 instead of
    # letting the Job burn its retries. (Connection refused / timeouts stay retryable.)
    try:
        socket.getaddrinfo(parts.hostname, port or (443 if parts.scheme == "https" else 80))
    except socket.gaierror as error:
        if error.errno == socket.EAI_AGAIN:  # the resolver itself is failing: retry may pass
            raise TransientError(
                f"S3_ENDPOINT_URL: DNS lookup of {parts.hostname!r} failed temporarily "
                "(EAI_AGAIN); the run is resumable"
            ) from None
        raise ConfigError(
            f"S3_ENDPOINT_URL: host {parts.hostname!r} does not resolve; check the endpoint"
        ) from None


def _make_client(
    endpoint_url: str | None,
    region: str | None,
    access_key_id: str | None,
    secret_access_key: str | None,
    max_attempts: int,
) -> Any:
    import boto3
    from botocore.config import Config

    if endpoint_url:
        _check_endpoint(endpoint_url)
    if bool(access_key_id) != bool(secret_access_key):
        raise ConfigError("set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither")
    session = boto3.session.Session(
        aws_access_key_id=access_key_id or None,
        aws_secret_access_key=secret_access_key or None,
        region_name=region,
    )
    # Whatever the chain found (env, profile, web identity, IMDS) must never be printed either.
    credentials = session.get_credentials()
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        register_secret(frozen.access_key)
        register_secret(frozen.secret_key)
        register_secret(frozen.token)
    config = Config(
        region_name=region or session.region_name or "us-east-1",
        # Path-style: MinIO, SeaweedFS and Ceph do not serve bucket subdomains by default.
        # No SHA-256 of every body for the signature (botocore does it over plain http): each
        # body we send carries a signed x-amz-checksum-sha256 header the server checks (probed;
        # where it does not, the upload is verified afterwards), as botocore does over https.
        s3={"addressing_style": "path", "payload_signing_enabled": False},
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=32,
        # Only when an operation requires one: we send SHA-256 ourselves where it matters.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return session.client("s3", endpoint_url=endpoint_url or None, config=config)


def _check_bucket(store: S3Store, *, create_bucket: bool, region: str | None) -> None:
    """Fail early with a clear message: credentials, permissions, bucket existence."""
    # ListObjectsV2 rather than HeadBucket: HEAD errors have no body, so bad credentials and
    # missing permissions would be indistinguishable. We need s3:ListBucket anyway (a HEAD of
    # a missing key without it is 403, not 404, which would break skip-if-present).
    try:
        store.client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix, MaxKeys=1)
        return
    except Exception as error:
        code, _status = _error_code(error)
        if code != "NoSuchBucket" or not create_bucket:
            raise _translate(error, "list", store.uri) from None
    kwargs: dict[str, Any] = {"Bucket": store.bucket}
    actual_region = store.client.meta.region_name
    if actual_region and actual_region != "us-east-1" and region:
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": actual_region}
    try:
        store.client.create_bucket(**kwargs)
        log.info("bucket_created", tag="upload", bucket=store.bucket)
    except Exception as error:
        code, _status = _error_code(error)
        if code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
            raise _translate(error, "create bucket", store.uri) from None


# --------------------------------------------------------------------------------------------
# trees


def upload_tree(
    store: Store, local_dir: Path, prefix: str, *, workers: int = 4
) -> list[ObjectInfo]:
    """Upload every file under ``local_dir`` to ``prefix`` + relative path, skipping identical ones.

    Args:
        store: destination.
        local_dir: directory to upload (symlinks are not followed: they are skipped).
        prefix: key prefix, '' or ending in '/'.
        workers: files in flight at once.

    Returns:
        ObjectInfo of every file, sorted by key.

    Raises:
        InputError: ``local_dir`` is not a directory.
        StorageError / ConfigError: from the store.
    """
    _check_prefix(prefix)
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise InputError(f"{local_dir} is not a directory; nothing to upload")
    files = {
        prefix + p.relative_to(local_dir).as_posix(): p
        for p in sorted(local_dir.rglob("*"))
        if p.is_file() and not p.is_symlink() and not _is_temp_name(p.name)
    }
    return upload_files(store, files, workers=workers)


def upload_files(
    store: Store,
    files: Mapping[str, Path],
    *,
    workers: int = 4,
    on_uploaded: Callable[[ObjectInfo], None] | None = None,
) -> list[ObjectInfo]:
    """Upload local files to the given keys, in parallel, skipping identical objects.

    Files go up in parallel (the S3 store's part concurrency is shared, not multiplied).
    Logs one ``upload`` event per file (bytes, seconds, MB/s, skipped) and a summary.

    Args:
        store: destination.
        files: store key → local file.
        workers: files in flight at once.
        on_uploaded: called with each file's ObjectInfo as soon as that file is stored
            (from a worker thread, while other files may still be in flight).

    Returns:
        ObjectInfo of every file, sorted by key.
    """
    started = time.perf_counter()

    def one(key: str, path: Path) -> PutResult:
        if isinstance(store, _ReportingStore):
            result = store.upload(key, path)
        else:
            t0 = time.perf_counter()
            info = store.put_file(key, path)
            result = PutResult(info, False, time.perf_counter() - t0)
        log.info(
            "upload",
            tag="upload",
            key=key,
            bytes=result.info.size,
            seconds=round(result.seconds, 3),
            mb_per_s=None if result.skipped else _mbps(result.info.size, result.seconds),
            skipped=result.skipped,
        )
        if on_uploaded is not None:
            on_uploaded(result.info)
        return result

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        # Each task runs in a copy of this thread's context, so run_id/model stay bound.
        futures = [
            pool.submit(contextvars.copy_context().run, one, key, path)
            for key, path in sorted(files.items())
        ]
        results = [future.result() for future in futures]
    sent = sum(r.info.size for r in results if not r.skipped)
    elapsed = time.perf_counter() - started
    log.info(
        "upload_done",
        tag="upload",
        files=len(results),
        skipped=sum(r.skipped for r in results),
        bytes=sent,
        seconds=round(elapsed, 3),
        mb_per_s=_mbps(sent, elapsed),
    )
    return sorted((r.info for r in results), key=lambda i: i.key)


def _mbps(size: int, seconds: float) -> float:
    return round(size / MiB / seconds, 1) if seconds > 0 else 0.0
