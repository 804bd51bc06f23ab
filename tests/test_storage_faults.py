"""Fault injection: connections cut mid-upload, error responses, corrupted bytes, a killed uploader.

A loopback TCP proxy (tests.servers.FaultProxy) sits between the S3Store and a real
SeaweedFS. What must hold: no object ever looks complete when it is not (head is None or the
previous version, never a wrong sha256), re-runs complete the run, and committed runs are never
overwritten or lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from oneseek_job import layout
from oneseek_job.certify import commit_manifest, finish_run, is_committed
from oneseek_job.documents import FileDigest
from oneseek_job.errors import StorageError
from oneseek_job.rundocs import build_manifest
from oneseek_job.storage import S3Store, upload_tree
from tests.fixtures_s3 import SMALL_PART, S3Server, make_s3_store
from tests.servers import FaultProxy, fault_proxy

REPO = Path(__file__).resolve().parents[1]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def seaweed(s3_server: S3Server) -> S3Server:
    """Every fault test runs against each S3 implementation (SeaweedFS, moto)."""
    return s3_server


@pytest.fixture
def proxy(seaweed: S3Server) -> Iterator[FaultProxy]:
    with fault_proxy(seaweed.endpoint_url) as p:
        yield p


@pytest.fixture
def direct(seaweed: S3Server) -> Iterator[S3Store]:
    """A store that talks to the server directly (the truth the tests check against)."""
    store = make_s3_store(seaweed, "oneseek-tests")
    yield store
    store.close()


def via(seaweed: S3Server, direct: S3Store, proxy: FaultProxy, attempts: int = 2) -> S3Store:
    """A store on the same bucket and prefix as ``direct``, but through the proxy."""
    return make_s3_store(
        seaweed,
        direct.bucket,
        direct.prefix.rstrip("/"),
        endpoint_url=proxy.url,
        max_attempts=attempts,
    )


def test_cut_mid_upload_leaves_old_object_then_rerun_completes(
    seaweed: S3Server, direct: S3Store, proxy: FaultProxy, tmp_path: Path
) -> None:
    old, new = os.urandom(3 * SMALL_PART), os.urandom(3 * SMALL_PART)
    (tmp_path / "old.bin").write_bytes(old)
    (tmp_path / "new.bin").write_bytes(new)
    direct.put_file("w/model.pth", tmp_path / "old.bin")
    flaky = via(seaweed, direct, proxy)
    # Let about one and a half parts through, then cut every connection that sends more.
    proxy.set_mode("cut", budget=SMALL_PART + SMALL_PART // 2)
    with pytest.raises(StorageError, match="resumable") as info:
        flaky.put_file("w/model.pth", tmp_path / "new.bin")
    assert info.value.exit_code == 1
    head = direct.head("w/model.pth")
    assert head is not None and head.sha256 == sha(old)  # still the old, complete object
    assert direct.get_bytes("w/model.pth") == old

    proxy.set_mode("cut", budget=SMALL_PART // 2)
    with pytest.raises(StorageError):
        flaky.put_file("w/fresh.pth", tmp_path / "new.bin")
    assert direct.head("w/fresh.pth") is None  # nothing that could pass for complete

    proxy.set_mode("pass")
    proxy.drop_all()
    flaky.put_file("w/model.pth", tmp_path / "new.bin")
    flaky.put_file("w/fresh.pth", tmp_path / "new.bin")
    for key in ("w/model.pth", "w/fresh.pth"):
        head = direct.head(key)
        assert head is not None and head.sha256 == sha(new)
        assert direct.get_bytes(key) == new
    flaky.close()


def test_transient_errors_are_retried(
    seaweed: S3Server, direct: S3Store, proxy: FaultProxy
) -> None:
    flaky = via(seaweed, direct, proxy, attempts=4)
    proxy.set_mode("error", status=503, count=2)
    proxy.drop_all()  # pooled connections must reconnect through the failing gateway
    flaky.put_bytes("retry/ok.json", b"{}")
    assert proxy.errors_returned == 2
    assert direct.get_bytes("retry/ok.json") == b"{}"


def test_persistent_errors_become_storage_error(
    seaweed: S3Server, direct: S3Store, proxy: FaultProxy
) -> None:
    flaky = via(seaweed, direct, proxy, attempts=2)
    proxy.set_mode("error", status=503)
    proxy.drop_all()
    with pytest.raises(StorageError, match="resumable") as info:
        flaky.put_bytes("retry/never.json", b"{}")
    assert info.value.exit_code == 1
    assert proxy.errors_returned >= 2
    assert direct.head("retry/never.json") is None


@pytest.mark.parametrize("size", [1024 * 1024, 2 * SMALL_PART + 3], ids=["single", "multipart"])
def test_corrupted_bytes_are_rejected(
    seaweed: S3Server, direct: S3Store, proxy: FaultProxy, tmp_path: Path, size: int
) -> None:
    data = os.urandom(size)
    (tmp_path / "f.bin").write_bytes(data)
    flaky = via(seaweed, direct, proxy, attempts=1)
    # Flip a bit well inside the first PUT's body (the HEAD and headers before it are < 4 KiB).
    proxy.set_mode("corrupt", budget=min(size, SMALL_PART) // 2)
    with pytest.raises(StorageError):
        flaky.put_file("corrupt/f.bin", tmp_path / "f.bin")
    assert direct.head("corrupt/f.bin") is None
    proxy.set_mode("pass")
    flaky.put_file("corrupt/f.bin", tmp_path / "f.bin")
    assert direct.get_bytes("corrupt/f.bin") == data
    flaky.close()


UPLOADER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from oneseek_job.logs import configure_logging
    from oneseek_job.certify import commit_manifest, finish_run, stage_files
    from oneseek_job.rundocs import build_manifest
    from oneseek_job.storage import open_store
    endpoint, uri, key_id, secret, tree, run_id, part = sys.argv[1:8]
    configure_logging(json=True)
    store = open_store(uri, endpoint_url=endpoint, access_key_id=key_id,
                       secret_access_key=secret, max_attempts=2, part_size=int(part),
                       multipart_threshold=int(part))
    files = stage_files(store, run_id, Path(tree))
    manifest = build_manifest(run_id, files, signing_key=None)
    won = commit_manifest(store, run_id, manifest)
    finish_run(store, run_id)
    print("COMMITTED" if won else "LOST", flush=True)
    """
)


def run_uploader(
    seaweed: S3Server, endpoint: str, direct: S3Store, tree: Path, run_id: str
) -> subprocess.Popen[str]:
    uri = f"s3://{direct.bucket}/{direct.prefix.rstrip('/')}"
    args = [seaweed.admin.access_key, seaweed.admin.secret_key, str(tree), run_id]
    return subprocess.Popen(
        [sys.executable, "-c", UPLOADER, endpoint, uri, *args, str(SMALL_PART)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_sigkill_mid_upload_then_rerun_commits_matching_hashes(
    seaweed: S3Server, direct: S3Store, proxy: FaultProxy, tmp_path: Path
) -> None:
    # An earlier committed run that nothing may touch.
    old_prefix = layout.run_prefix("run-old")
    old_files = {"oneseek_dna.json": FileDigest(size=7, sha256=sha(b"old run"))}
    direct.put_bytes(layout.blob_key("run-old", sha(b"old run")), b"old run")
    old_manifest = build_manifest("run-old", old_files, signing_key=None)
    assert commit_manifest(direct, "run-old", old_manifest)
    finish_run(direct, "run-old")
    before = {o.key: o.sha256 for o in direct.list(old_prefix)}

    tree = tmp_path / "tree"
    (tree / "weights").mkdir(parents=True)
    (tree / "lora_adapters" / "m-adapter").mkdir(parents=True)
    for i in range(3):
        (tree / "weights" / f"part{i}.pth").write_bytes(os.urandom(SMALL_PART + 1000 * i))
    (tree / "lora_adapters" / "m-adapter" / "adapter_config.json").write_bytes(b'{"r": 4}')
    (tree / "oneseek_dna.json").write_bytes(b'{"dna": "new"}')

    # Let ~1.5 files through, then stall: the uploader is stuck mid-upload and gets SIGKILLed.
    proxy.set_mode("hang", budget=SMALL_PART + SMALL_PART // 2)
    proc = run_uploader(seaweed, proxy.url, direct, tree, "run-new")
    deadline = time.monotonic() + 60
    while not proxy.held.is_set() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.held.is_set(), f"uploader never reached the stall: {proc.poll()}"
    assert proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not is_committed(direct, "run-new")
    assert not list(direct.list(layout.run_prefix("run-new")))  # nothing under the run yet
    # whatever got staged is complete and correct (named by its content); partial files are
    # simply absent (their unfinished multipart uploads are aborted when the run finishes)
    for info in direct.list(layout.staging_prefix("run-new")):
        assert info.key.rsplit("/", 1)[-1] == info.sha256 == direct._content_sha256(info.key)

    proxy.set_mode("pass")
    proxy.drop_all()
    rerun = run_uploader(seaweed, proxy.url, direct, tree, "run-new")
    out, _ = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, out
    assert "COMMITTED" in out

    prefix = layout.run_prefix("run-new")
    manifest = json.loads(direct.get_bytes(prefix + layout.MANIFEST_NAME))
    local_files = {
        p.relative_to(tree).as_posix(): sha(p.read_bytes()) for p in tree.rglob("*") if p.is_file()
    }
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == local_files
    # finished: no staging objects and no unfinished multipart upload left anywhere
    assert not list(direct.list(layout.staging_prefix("run-new")))
    uploads = direct.client.list_multipart_uploads(Bucket=direct.bucket, Prefix=direct.prefix)
    assert not uploads.get("Uploads")
    for rel, digest in local_files.items():
        assert sha(direct.get_bytes(prefix + rel)) == digest
        head = direct.head(prefix + rel)
        assert head is not None and head.sha256 == digest
    # the earlier run is exactly as it was
    assert {o.key: o.sha256 for o in direct.list(old_prefix)} == before
    assert direct.get_bytes(old_prefix + layout.MANIFEST_NAME) == old_manifest

    # a third run with different content cannot replace the committed manifest
    (tree / "oneseek_dna.json").write_bytes(b'{"dna": "tampered"}')
    third = run_uploader(seaweed, seaweed.endpoint_url, direct, tree, "run-new")
    out, _ = third.communicate(timeout=120)
    assert third.returncode == 0, out
    assert "LOST" in out
    assert json.loads(direct.get_bytes(prefix + layout.MANIFEST_NAME)) == manifest


def test_upload_tree_through_flaky_network_rerun_only_sends_missing(
    seaweed: S3Server, direct: S3Store, proxy: FaultProxy, tmp_path: Path
) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    for i in range(4):
        (tree / f"small{i}.json").write_bytes(os.urandom(2000))
    (tree / "z-big.bin").write_bytes(os.urandom(2 * SMALL_PART))
    flaky = via(seaweed, direct, proxy)
    upload_tree(flaky, tree, "flaky/", workers=1)  # everything up once
    (tree / "z-big.bin").write_bytes(os.urandom(2 * SMALL_PART))  # then the big file changes
    proxy.set_mode("cut", budget=SMALL_PART // 2)
    with pytest.raises(StorageError):
        upload_tree(flaky, tree, "flaky/", workers=1)
    head = direct.head("flaky/z-big.bin")
    assert head is not None and head.sha256 != sha((tree / "z-big.bin").read_bytes())
    proxy.set_mode("pass")
    proxy.drop_all()
    infos = upload_tree(flaky, tree, "flaky/", workers=1)
    stored = {i.key: i.sha256 for i in infos}
    assert stored["flaky/z-big.bin"] == sha((tree / "z-big.bin").read_bytes())
    assert direct.get_bytes("flaky/z-big.bin") == (tree / "z-big.bin").read_bytes()
    flaky.close()
