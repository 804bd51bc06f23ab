"""The S3 checksum forms of a file, checked against zlib and hashlib on arbitrary bytes."""

from __future__ import annotations

import base64
import hashlib
import zlib
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from oneseek_job.checksums import crc32_combine, file_digests


def b64(value: int) -> str:
    return base64.b64encode(value.to_bytes(4, "big")).decode()


@given(st.binary(max_size=3000), st.binary(max_size=3000))
def test_crc32_combine_is_the_crc32_of_the_concatenation(a: bytes, b: bytes) -> None:
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=5000), part_size=st.integers(1, 1200))
def test_file_digests_match_an_independent_computation(
    tmp_path_factory: object, data: bytes, part_size: int
) -> None:
    path = Path(tmp_path_factory.mktemp("d")) / "f.bin"  # type: ignore[attr-defined]
    path.write_bytes(data)
    digests = file_digests(path, part_size, crc32=True, md5=True)
    parts = [data[i : i + part_size] for i in range(0, len(data), part_size)] or [b""]
    assert digests.sha256 == hashlib.sha256(data).hexdigest()
    assert digests.size == len(data) and digests.parts == len(parts)
    assert list(digests.part_crc32) == [zlib.crc32(p) for p in parts]
    assert digests.crc32_full == zlib.crc32(data)
    composite = zlib.crc32(b"".join(zlib.crc32(p).to_bytes(4, "big") for p in parts))
    assert digests.crc32_composite == composite
    md5s = [hashlib.md5(p).digest() for p in parts]
    assert digests.etag(multipart=False) == md5s[0].hex()
    assert digests.etag(multipart=True) == f"{hashlib.md5(b''.join(md5s)).hexdigest()}-{len(parts)}"

    # Every form AWS documents is accepted by value; anything else is not.
    count = len(parts)
    assert digests.crc32_matches(f"{b64(composite)}-{count}")
    assert digests.crc32_matches(b64(composite))  # moto drops the "-N"
    assert digests.crc32_matches(b64(composite), "COMPOSITE")
    assert digests.crc32_matches(b64(zlib.crc32(data)), "FULL_OBJECT")
    assert digests.crc32_matches(b64(zlib.crc32(data)))
    assert not digests.crc32_matches(f"{b64(composite)}-{count + 1}")
    assert not digests.crc32_matches(b64(composite ^ 1))
    assert not digests.crc32_matches("not base64!")
    if composite != zlib.crc32(data):
        assert not digests.crc32_matches(b64(composite), "FULL_OBJECT")
    whole = base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert digests.sha256_matches(whole)
    assert not digests.sha256_matches(
        base64.b64encode(hashlib.sha256(data + b"x").digest()).decode()
    )


def test_digests_leave_out_what_was_not_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100)
    digests = file_digests(path, 30, crc32=False, md5=False)
    assert digests.parts == 4 and not digests.part_crc32 and not digests.part_md5
    assert digests.crc32_matches(b64(zlib.crc32(b"x" * 100))) is None
    assert digests.etag(multipart=True) is None
