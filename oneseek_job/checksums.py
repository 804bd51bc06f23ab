"""What one read pass over a local file yields for an S3 upload, and the checksum forms a
server reports for it.

- The whole file's SHA-256: the digest of the artifact contract (MANIFEST, verify, metadata).
- Per part of a multipart upload, its CRC32: the transport checksum, sent with the part (the
  checksum the AWS SDKs send by default; a server that validates checksums refuses a part
  whose bytes differ from it, whether damaged in transit or changed on disk since the pass).
  The server then reports the object's CRC32 as the composite (the CRC32 of the part CRC32s,
  with or without ``-<parts>``) or as the full-object CRC32 (combined here from the parts).
- Per part, where the server validates no checksum, its MD5: such a server's ETag is the MD5
  of the body it received (multipart: the MD5 of the part MD5s, ``-<parts>``).

A single PutObject carries the body's SHA-256 instead; the server reports it back as the
full-object SHA-256.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

__all__ = ["FileDigests", "crc32_combine", "file_digests"]

_BLOCK = 4 * 1024 * 1024
_CRC32_POLY = 0xEDB88320  # reflected, as zlib's


@dataclass(frozen=True)
class FileDigests:
    """Digests of one file, split into ``part_size`` parts (the last one may be shorter)."""

    sha256: str  # lowercase hex of the whole file
    size: int
    part_size: int
    part_crc32: tuple[int, ...]  # empty unless asked for
    part_md5: tuple[bytes, ...]  # empty unless asked for

    @property
    def parts(self) -> int:
        return max(1, -(-self.size // self.part_size))

    def part_crc32_b64(self, index: int) -> str:
        """Part ``index``'s (0-based) CRC32 as S3 headers carry it."""
        return _b64_crc32(self.part_crc32[index])

    @cached_property
    def crc32_composite(self) -> int:
        """CRC32 over the big-endian part CRC32s (S3's composite multipart checksum)."""
        return zlib.crc32(b"".join(crc.to_bytes(4, "big") for crc in self.part_crc32))

    @cached_property
    def crc32_full(self) -> int:
        """The whole file's CRC32, combined from the parts (no second pass over the bytes)."""
        whole = 0
        for index, crc in enumerate(self.part_crc32):
            length = min(self.part_size, self.size - index * self.part_size)
            whole = crc32_combine(whole, crc, length)
        return whole

    def crc32_matches(self, stored: str, checksum_type: str | None = None) -> bool | None:
        """Whether a server's ``ChecksumCRC32`` is one of the forms AWS documents for these
        parts: the composite (with or without ``-<parts>``) or the full-object CRC32. Compared
        by value, never as a string. None: no part CRC32s were computed, nothing to compare.
        """
        if not self.part_crc32:
            return None
        value, _, count = stored.strip().partition("-")
        raw = _b64_decode(value)
        if raw is None or len(raw) != 4 or (count and count != str(len(self.part_crc32))):
            return False
        number = int.from_bytes(raw, "big")
        if checksum_type == "FULL_OBJECT":
            return number == self.crc32_full
        if checksum_type == "COMPOSITE" or count:
            return number == self.crc32_composite
        return number in (self.crc32_composite, self.crc32_full)

    def sha256_matches(self, stored: str) -> bool:
        """Whether a server's full-object ``ChecksumSHA256`` is this file's SHA-256."""
        return _b64_decode(stored.strip()) == bytes.fromhex(self.sha256)

    def etag(self, *, multipart: bool) -> str | None:
        """The ETag a server that computes MD5s reports for these bytes (None: not hashed)."""
        if not self.part_md5:
            return None
        if not multipart:
            return self.part_md5[0].hex()
        joined = hashlib.md5(b"".join(self.part_md5), usedforsecurity=False).hexdigest()
        return f"{joined}-{len(self.part_md5)}"


def file_digests(path: Path, part_size: int, *, crc32: bool, md5: bool) -> FileDigests:
    """One read pass: the whole file's SHA-256, and per part its CRC32 and/or MD5."""
    whole = hashlib.sha256()
    crcs: list[int] = []
    md5s: list[bytes] = []
    size = 0
    with path.open("rb") as handle:
        while True:
            crc = 0
            part_md5 = hashlib.md5(usedforsecurity=False) if md5 else None
            remaining = part_size
            while remaining > 0:
                block = handle.read(min(_BLOCK, remaining))
                if not block:
                    break
                whole.update(block)
                if crc32:
                    crc = zlib.crc32(block, crc)
                if part_md5 is not None:
                    part_md5.update(block)
                remaining -= len(block)
            read = part_size - remaining
            size += read
            if read == 0 and size > 0:  # the previous part ended the file exactly
                break
            if crc32:
                crcs.append(crc)
            if part_md5 is not None:
                md5s.append(part_md5.digest())
            if remaining > 0:
                break
    return FileDigests(whole.hexdigest(), size, part_size, tuple(crcs), tuple(md5s))


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC32 of ``A + B`` from ``crc32(A)``, ``crc32(B)`` and ``len(B)`` (zlib's algorithm,
    which Python's zlib module does not expose): ``crc1`` is advanced over ``len2`` zero
    bytes by squaring the GF(2) operator matrix, then combined with ``crc2``."""
    if len2 <= 0:
        return crc1
    odd = [_CRC32_POLY] + [1 << n for n in range(31)]  # the operator for one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four zero bits
    while True:
        even = _gf2_square(odd)  # first pass: one zero byte
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


def _gf2_times(matrix: list[int], vector: int) -> int:
    total = 0
    row = 0
    while vector:
        if vector & 1:
            total ^= matrix[row]
        vector >>= 1
        row += 1
    return total


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, matrix[n]) for n in range(32)]


def _b64_crc32(value: int) -> str:
    return base64.b64encode(value.to_bytes(4, "big")).decode()


def _b64_decode(value: str) -> bytes | None:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
