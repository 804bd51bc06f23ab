"""Store contract tests, each run against LocalStore and S3Store on a real SeaweedFS."""

from __future__ import annotations

import base64
import collections
import hashlib
import os
import threading
import zlib
from pathlib import Path
from typing import Any

import pytest

from oneseek_job import storage
from oneseek_job.errors import ConfigError, IntegrityError, StorageError
from oneseek_job.storage import (
    AlreadyExists,
    Capabilities,
    LocalStore,
    S3Store,
    Store,
    open_store,
    parse_s3_uri,
    store_from_settings,
    upload_tree,
)
from tests.fixtures_s3 import SMALL_PART, make_s3_store
from tests.servers import MotoServer, SeaweedServer, free_port


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- basic contract


def test_put_get_head_roundtrip(store: Store) -> None:
    data = os.urandom(1000)
    info = store.put_bytes("a/b/c.bin", data)
    assert info.sha256 == sha(data)
    assert store.get_bytes("a/b/c.bin") == data
    head = store.head("a/b/c.bin")
    assert head is not None
    assert (head.size, head.sha256) == (1000, sha(data))
    assert store.head("a/b/missing") is None
    with pytest.raises(FileNotFoundError):
        store.get_bytes("a/b/missing")


def test_put_file_multipart_and_download(store: Store, tmp_path: Path) -> None:
    # 12 MiB with 5 MiB parts: three parts on S3, each with a SHA-256 checksum.
    data = os.urandom(12 * 1024 * 1024 + 17)
    src = write(tmp_path / "src" / "big.bin", data)
    info = store.put_file("weights/big.bin", src)
    assert info.sha256 == sha(data)
    head = store.head("weights/big.bin")
    assert head is not None and head.sha256 == sha(data) and head.size == len(data)
    out = tmp_path / "out" / "big.bin"
    store.download_file("weights/big.bin", out)
    assert out.read_bytes() == data


def test_s3_multipart_object_checksums(
    s3_store: S3Store, s3_server: object, tmp_path: Path
) -> None:
    data = os.urandom(2 * SMALL_PART + 5)
    src = write(tmp_path / "f.bin", data)
    s3_store.put_file("f.bin", src)
    raw = s3_store.client.head_object(
        Bucket=s3_store.bucket, Key=s3_store.prefix + "f.bin", ChecksumMode="ENABLED"
    )
    assert raw["Metadata"]["sha256"] == sha(data)
    parts = [data[i : i + SMALL_PART] for i in range(0, len(data), SMALL_PART)]
    # Both servers keep the composite of the three part CRC32s (SeaweedFS, which checked
    # each one, with the "-3" suffix; moto, which checks none, without it).
    crcs = b"".join(zlib.crc32(part).to_bytes(4, "big") for part in parts)
    composite = base64.b64encode(zlib.crc32(crcs).to_bytes(4, "big")).decode()
    seaweed = type(s3_server).__name__ == "SeaweedServer"
    assert raw["ChecksumCRC32"] == (f"{composite}-3" if seaweed else composite)
    if not seaweed:
        # What moto's upload is checked by instead: its ETag, the MD5 of the part MD5s.
        md5s = b"".join(hashlib.md5(part).digest() for part in parts)
        assert raw["ETag"].strip('"') == f"{hashlib.md5(md5s).hexdigest()}-3"


def test_capabilities_are_probed_per_server(s3_store: S3Store, s3_server: object) -> None:
    caps = s3_store.capabilities
    assert caps.conditional_put  # both enforce If-None-Match on PutObject
    # SeaweedFS rejects a body or part that does not match its checksum; moto accepts it,
    # but reports a multipart object's CRC32 computed from the bytes it stored.
    assert caps.checksum_validation is (type(s3_server).__name__ == "SeaweedServer")
    assert caps.checksum_computed
    assert not list(s3_store.list(".oneseek-probe/"))  # probe objects are removed


def test_without_checksum_validation_uploads_are_checked_by_server_digests(
    moto: MotoServer, tmp_path: Path
) -> None:
    """moto validates no checksum, but computes a multipart object's CRC32 from the bytes it
    stored and a body's MD5 ETag: those must equal ours (no read-back). A reported CRC32
    that is not ours fails the upload; where a server's ETag is something else, a single
    object is read back and re-hashed instead, and still accepted only when it matches."""
    store = make_s3_store(moto, "oneseek-tests")
    assert not store.capabilities.checksum_validation and store.capabilities.checksum_computed
    calls: collections.Counter[str] = collections.Counter()

    def count(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    store.client.meta.events.register("before-call.s3", count)
    big = write(tmp_path / "big.bin", os.urandom(2 * SMALL_PART + 3))
    small = write(tmp_path / "small.bin", os.urandom(1000))
    store.put_file("etag/big.bin", big)
    store.put_file("etag/small.bin", small)
    store.put_bytes("etag/doc.json", b"{}")
    assert store.upload("etag/big.bin", big).skipped  # the skip is a CRC32 check too
    assert calls["UploadPart"] == 3 and calls["GetObject"] == 0, calls

    def foreign_etag(parsed: dict[str, Any], **_: Any) -> None:
        if "ETag" in parsed:
            parsed["ETag"] = '"not-an-md5-scheme"'

    store.client.meta.events.register("after-call.s3.HeadObject", foreign_etag)
    store.client.meta.events.register("after-call.s3.PutObject", foreign_etag)
    store.put_file("etag/big-2.bin", big)  # its CRC32 still speaks for it
    store.put_file("etag/small-2.bin", small)
    store.put_bytes("etag/doc-2.json", b"{}")
    assert calls["GetObject"] == 2, calls
    assert store.get_bytes("etag/big-2.bin") == big.read_bytes()

    def other_crc32(parsed: dict[str, Any], **_: Any) -> None:
        if parsed.get("ChecksumCRC32"):
            parsed["ChecksumCRC32"] = "AAAAAA=="

    store.client.meta.events.register("after-call.s3.HeadObject", other_crc32)
    with pytest.raises(IntegrityError, match="checksum"):
        store.put_file("etag/big-3.bin", big)
    assert store.head("etag/big-3.bin") is None  # deleted, not left half-trusted
    store.close()


def test_a_server_that_echoes_checksums_is_checked_by_etag_or_read_back(
    moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where a server neither validates nor computes checksums, a multipart upload is checked
    by the MD5 ETag (the MD5 of the part MD5s), else read back, never by the echoed CRC32."""
    echoing = Capabilities(conditional_put=True, checksum_validation=False, checksum_computed=False)
    monkeypatch.setattr(S3Store, "_probe", lambda self: echoing)
    monkeypatch.setattr(storage, "_PROBED", {})  # this test's probe result only
    store = make_s3_store(moto, "oneseek-tests")
    assert store.capabilities == echoing
    calls: collections.Counter[str] = collections.Counter()
    store.client.meta.events.register(
        "before-call.s3", lambda model, **_: calls.update([model.name])
    )
    big = write(tmp_path / "big.bin", os.urandom(2 * SMALL_PART + 3))
    store.put_file("echo/big.bin", big)
    assert calls["GetObject"] == 0, calls

    def foreign_etag(parsed: dict[str, Any], **_: Any) -> None:
        if "ETag" in parsed:
            parsed["ETag"] = '"not-an-md5-scheme"'

    store.client.meta.events.register("after-call.s3.HeadObject", foreign_etag)
    store.put_file("echo/big-2.bin", big)
    assert calls["GetObject"] == 1, calls
    store.close()


def test_put_file_skips_identical_and_replaces_changed(store: Store, tmp_path: Path) -> None:
    src = write(tmp_path / "x.bin", b"one" * 1000)
    first = store.upload("k/x.bin", src)  # type: ignore[attr-defined]
    again = store.upload("k/x.bin", src)  # type: ignore[attr-defined]
    assert not first.skipped and again.skipped
    assert again.info == first.info
    write(src, b"two" * 1000)
    changed = store.upload("k/x.bin", src)  # type: ignore[attr-defined]
    assert not changed.skipped
    assert store.get_bytes("k/x.bin") == b"two" * 1000


def test_list_is_sorted_and_prefix_filtered(store: Store) -> None:
    for key in ["r/b/2.txt", "r/a.txt", "r/b/1.txt", "rx/no.txt", "other/no.txt"]:
        store.put_bytes(key, key.encode())
    listed = list(store.list("r/"))
    assert [o.key for o in listed] == ["r/a.txt", "r/b/1.txt", "r/b/2.txt"]
    assert all(o.sha256 == sha(o.key.encode()) for o in listed)
    assert [o.key for o in store.list("r/b/")] == ["r/b/1.txt", "r/b/2.txt"]
    assert list(store.list("nothing/")) == []


def test_copy_keeps_content_and_sha(store: Store, tmp_path: Path) -> None:
    data = os.urandom(3000)
    store.put_bytes("src/a.bin", data)
    store.put_bytes("dst/a.bin", b"old")
    store.copy("src/a.bin", "dst/a.bin")
    head = store.head("dst/a.bin")
    assert head is not None and head.sha256 == sha(data)
    assert store.get_bytes("dst/a.bin") == data
    # the source is untouched when the copy is overwritten later
    store.put_bytes("dst/a.bin", b"newer")
    assert store.get_bytes("src/a.bin") == data
    with pytest.raises(FileNotFoundError):
        store.copy("src/missing", "dst/x")


def test_s3_managed_multipart_copy_keeps_sha(
    seaweed: SeaweedServer, fresh_bucket: str, tmp_path: Path
) -> None:
    store = make_s3_store(seaweed, fresh_bucket)
    store.copy_threshold = SMALL_PART  # force the >5 GiB code path (UploadPartCopy)
    data = os.urandom(2 * SMALL_PART + 1)
    store.put_file("a.bin", write(tmp_path / "a.bin", data))
    store.copy("a.bin", "b/a.bin")
    head = store.head("b/a.bin")
    assert head is not None and head.sha256 == sha(data)
    assert store.get_bytes("b/a.bin") == data
    store.close()


def test_conditional_put(store: Store) -> None:
    store.put_bytes("lock", b"first", if_none_match=True)
    with pytest.raises(AlreadyExists):
        store.put_bytes("lock", b"second", if_none_match=True)
    assert store.get_bytes("lock") == b"first"


def test_conditional_put_race_exactly_one_wins(store: Store) -> None:
    barrier = threading.Barrier(8)
    winners: list[int] = []
    losers: list[int] = []
    errors: list[BaseException] = []

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            store.put_bytes("race/MANIFEST.json", f"writer {i}".encode(), if_none_match=True)
            winners.append(i)
        except AlreadyExists:
            losers.append(i)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(winners) == 1 and len(losers) == 7
    assert store.get_bytes("race/MANIFEST.json") == f"writer {winners[0]}".encode()


@pytest.mark.parametrize("key", ["/abs", "a/../b", "", "a//b", "./a"])
def test_invalid_keys_rejected(store: Store, key: str) -> None:
    with pytest.raises(ValueError):
        store.put_bytes(key, b"x")


def test_local_store_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    store.put_bytes("a/b", b"1")
    store.put_file("a/c", write(tmp_path / "f", b"2"))
    store.copy("a/b", "a/d")
    names = sorted(p.name for p in (tmp_path / "s" / "a").iterdir())
    assert names == ["b", "c", "d"]


# ---------------------------------------------------------------- commit protocol


def make_run_tree(root: Path, seed: bytes) -> Path:
    write(root / "lora_adapters/m-adapter/adapter_model.safetensors", seed * 2000)
    write(root / "lora_adapters/m-adapter/adapter_config.json", b'{"r": 8}' + seed)
    write(root / "weights/oneseek-7b-zero-v1.0-m.pth", seed * 500)
    write(root / "weights/oneseek-7b-zero-v1.0.json", b"{}")
    write(root / "oneseek_dna.json", b'{"dna": "x"}')
    return root


def test_upload_tree_rerun_uploads_only_changed(store: Store, tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    tree = make_run_tree(tmp_path / "run", b"B")
    upload_tree(store, tree, "p/")
    write(tree / "oneseek_dna.json", b'{"dna": "changed"}')
    with capture_logs() as logs:
        upload_tree(store, tree, "p/")
    events = {e["key"]: e for e in logs if e["event"] == "upload"}
    assert not events["p/oneseek_dna.json"]["skipped"]
    assert all(e["skipped"] for k, e in events.items() if k != "p/oneseek_dna.json")
    assert all(e["tag"] == "upload" for e in events.values())


# ---------------------------------------------------------------- opening stores, errors


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("s3://", "no bucket"),
        ("s3://Bad_Bucket!/x", "not a valid bucket name"),
        ("s3://ab/x", "not a valid bucket name"),
        ("s3://bucket/a/../b", "'..'"),
        ("s3://user:pw@bucket/x", "without credentials"),
        ("ftp://host/x", "unsupported scheme"),
        ("gs://bucket/x", "unsupported scheme"),
    ],
)
def test_invalid_uri_is_config_error(uri: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match="ARTIFACTS_URI") as info:
        open_store(uri, endpoint_url="http://127.0.0.1:1")
    assert fragment in str(info.value)
    assert "pw" not in str(info.value)


def test_parse_s3_uri() -> None:
    assert parse_s3_uri("s3://my-bucket") == ("my-bucket", "")
    assert parse_s3_uri("s3://my-bucket/a/b/") == ("my-bucket", "a/b/")


def test_local_uri_forms(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path / "a")), LocalStore)
    store = open_store(f"file://{tmp_path}/b")
    assert isinstance(store, LocalStore) and store.root == tmp_path / "b"


def test_missing_bucket(seaweed: SeaweedServer) -> None:
    kwargs = {
        "endpoint_url": seaweed.endpoint_url,
        "access_key_id": seaweed.admin.access_key,
        "secret_access_key": seaweed.admin.secret_key,
        "max_attempts": 1,
    }
    with pytest.raises(ConfigError, match=r"bucket oneseek-absent does not exist.*--create-bucket"):
        open_store("s3://oneseek-absent/x", **kwargs)  # type: ignore[arg-type]
    store = open_store("s3://oneseek-absent/x", create_bucket=True, **kwargs)  # type: ignore[arg-type]
    store.put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v"
    # a second open finds it and create_bucket=True on an existing bucket is harmless
    again = open_store("s3://oneseek-absent/x", create_bucket=True, **kwargs)  # type: ignore[arg-type]
    assert again.get_bytes("k") == b"v"


def test_bad_credentials_are_config_errors_without_the_secret(
    seaweed: SeaweedServer, fresh_bucket: str
) -> None:
    wrong_secret = "wrong-secret-value-4711-abcdef"
    with pytest.raises(ConfigError, match="AWS_ACCESS_KEY_ID") as info:
        open_store(
            f"s3://{fresh_bucket}/x",
            endpoint_url=seaweed.endpoint_url,
            access_key_id=seaweed.admin.access_key,
            secret_access_key=wrong_secret,
            max_attempts=1,
        )
    assert wrong_secret not in str(info.value)
    assert seaweed.admin.access_key not in str(info.value)
    unknown_key = "AKIAUNKNOWNKEY123456"
    with pytest.raises(ConfigError, match="credentials") as info:
        open_store(
            f"s3://{fresh_bucket}/x",
            endpoint_url=seaweed.endpoint_url,
            access_key_id=unknown_key,
            secret_access_key=wrong_secret,
            max_attempts=1,
        )
    assert unknown_key not in str(info.value) and wrong_secret not in str(info.value)


def test_access_denied_is_config_error(
    seaweed: SeaweedServer, fresh_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "_PROBED", {})  # probed here, not by an earlier test
    reader = open_store(
        f"s3://{fresh_bucket}/x",
        endpoint_url=seaweed.endpoint_url,
        access_key_id=seaweed.reader.access_key,
        secret_access_key=seaweed.reader.secret_key,
        max_attempts=1,
    )  # a read-only identity can open (list) the bucket ...
    with pytest.raises(ConfigError, match="access denied") as info:
        reader.put_bytes("k", b"v")  # ... but not write to it
    assert seaweed.reader.secret_key not in str(info.value)
    assert info.value.exit_code == 2
    with pytest.raises(ConfigError, match="access denied") as probed:
        _ = reader.capabilities  # nor probe it (the probe writes)
    assert probed.value.exit_code == 2


def test_endpoint_down_is_retryable_storage_error(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint") as info:
        open_store(
            "s3://some-bucket/x",
            endpoint_url=f"http://127.0.0.1:{port}",
            access_key_id="AKIAEXAMPLEKEY000001",
            secret_access_key="top-secret-value-0001",
            max_attempts=2,
        )
    assert info.value.exit_code == 1
    assert "top-secret-value-0001" not in str(info.value)


@pytest.mark.parametrize(
    "endpoint", ["ftp://127.0.0.1:9000", "not a url", "http://host.invalid:9000"]
)
def test_bad_endpoint_is_config_error(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="S3_ENDPOINT_URL"):
        open_store("s3://some-bucket/x", endpoint_url=endpoint, max_attempts=1)


def test_only_half_the_credentials(seaweed: SeaweedServer) -> None:
    with pytest.raises(ConfigError, match="both"):
        open_store("s3://abc/x", endpoint_url=seaweed.endpoint_url, access_key_id="only-id")


def test_store_from_settings(seaweed: SeaweedServer, fresh_bucket: str) -> None:
    from oneseek_job.config import load_settings

    settings = load_settings(
        artifacts_uri=f"s3://{fresh_bucket}/pre",
        s3_endpoint_url=seaweed.endpoint_url,
        aws_region=seaweed.region,
        aws_access_key_id=seaweed.admin.access_key,
        aws_secret_access_key=seaweed.admin.secret_key,
    )
    store = store_from_settings(settings)
    assert isinstance(store, S3Store) and store.prefix == "pre/"
    store.put_bytes("x", b"1")
    raw = seaweed.client().get_object(Bucket=fresh_bucket, Key="pre/x")["Body"].read()
    assert raw == b"1"


def test_secret_never_in_logs(seaweed: SeaweedServer, fresh_bucket: str) -> None:
    import io

    import structlog

    from oneseek_job.logs import configure_logging, get_logger

    secret = "log-leak-canary-secret-31337"
    buffer = io.StringIO()
    configure_logging(json=True, stream=buffer)
    try:
        with pytest.raises(ConfigError) as info:
            open_store(
                f"s3://{fresh_bucket}/x",
                endpoint_url=seaweed.endpoint_url,
                access_key_id=seaweed.admin.access_key,
                secret_access_key=secret,
                max_attempts=1,
            )
        assert secret not in str(info.value)
        get_logger().error("open_failed", error=str(info.value), detail=f"with {secret}")
    finally:
        structlog.reset_defaults()
    out = buffer.getvalue()
    assert "open_failed" in out and secret not in out


def test_head_of_a_foreign_object_deleted_while_it_is_read_is_gone(s3_store: S3Store) -> None:
    """An object without our sha256 metadata is hashed by reading it back; a racing
    finisher may delete it between the HEAD and the GET: that is "absent", not a failure."""
    full = s3_store._key("foreign/blob.bin")
    s3_store.client.put_object(Bucket=s3_store.bucket, Key=full, Body=b"written by another tool")
    info = s3_store.head("foreign/blob.bin")
    assert info is not None
    assert info.sha256 == hashlib.sha256(b"written by another tool").hexdigest()

    real_get = s3_store.client.get_object

    def delete_then_get(**kwargs: Any) -> Any:
        s3_store.client.delete_object(Bucket=kwargs["Bucket"], Key=kwargs["Key"])
        return real_get(**kwargs)

    s3_store.client.get_object = delete_then_get  # type: ignore[method-assign]
    try:
        assert s3_store.head("foreign/blob.bin") is None
    finally:
        s3_store.client.get_object = real_get  # type: ignore[method-assign]


@pytest.mark.parametrize("exclusive", [False, True])
def test_local_write_redone_when_a_cleanup_removes_its_temp_file(
    tmp_path: Path, exclusive: bool
) -> None:
    """A finisher's cleanup of the prefix removes temp files it cannot tell from a killed
    writer's (and empty directories): the live write is redone, not failed (exit 1)."""
    store = LocalStore(tmp_path / "store")
    real_write_temp = store._write_temp
    swept: list[Path] = []

    def write_then_swept(target: Path, data: bytes | Path) -> Path:
        tmp = real_write_temp(target, data)
        if not swept:  # the first attempt loses its temp file to the other finisher
            store.cleanup("run/")
            swept.append(tmp)
        return tmp

    store._write_temp = write_then_swept  # type: ignore[method-assign]
    info = store.put_bytes("run/MANIFEST.json", b"{}", if_none_match=exclusive)
    assert swept and not swept[0].exists()
    assert store.get_bytes("run/MANIFEST.json") == b"{}"
    assert info.sha256 == hashlib.sha256(b"{}").hexdigest()
    if exclusive:
        with pytest.raises(AlreadyExists):
            store.put_bytes("run/MANIFEST.json", b"[]", if_none_match=True)
