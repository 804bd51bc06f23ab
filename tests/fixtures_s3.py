"""pytest fixtures for storage tests: one SeaweedFS and one moto server per session, a store
per test. ``store`` and ``s3_store`` run every test against each S3 implementation.

Load with ``pytest_plugins = ["tests.fixtures_s3"]`` in ``tests/conftest.py``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from oneseek_job.storage import LocalStore, S3Store, Store, open_store
from tests.servers import MotoServer, SeaweedServer

__all__ = [
    "S3_SERVERS",
    "SMALL_PART",
    "S3Server",
    "fresh_bucket",
    "make_s3_store",
    "moto",
    "s3_server",
    "s3_store",
    "seaweed",
    "store",
]

S3Server = SeaweedServer | MotoServer
S3_SERVERS = ["seaweedfs", "moto"]

# Small multipart settings so tests exercise multipart with ~12 MiB files.
SMALL_PART = 5 * 1024 * 1024
_counter = itertools.count()


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedServer]:
    """A real SeaweedFS S3 server on loopback with enforced credentials, for the session."""
    server = SeaweedServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    """moto's S3 server on loopback, for the session (a second S3 implementation)."""
    server = MotoServer()
    server.start()
    try:
        server.client().create_bucket(Bucket="oneseek-tests")
        yield server
    finally:
        server.stop()


@pytest.fixture(params=S3_SERVERS)
def s3_server(request: pytest.FixtureRequest) -> S3Server:
    """Each S3 implementation in turn (its shared ``oneseek-tests`` bucket exists)."""
    if request.param == "moto":
        server: S3Server = request.getfixturevalue("moto")
        return server
    request.getfixturevalue("fresh_bucket")
    seaweed: SeaweedServer = request.getfixturevalue("seaweed")
    return seaweed


@pytest.fixture(scope="session")
def fresh_bucket(seaweed: SeaweedServer) -> str:
    """Name of an existing bucket shared by the session; stores get a unique prefix each.

    One bucket, not one per test: every SeaweedFS bucket is a collection with its own volumes,
    and growing them per test would make the suite slow.
    """
    name = "oneseek-tests"
    seaweed.client().create_bucket(Bucket=name)
    return name


def make_s3_store(
    seaweed: S3Server,
    bucket: str,
    prefix: str | None = None,
    *,
    endpoint_url: str | None = None,
    max_attempts: int = 2,
) -> S3Store:
    """An S3Store through open_store, with test-sized multipart settings."""
    if prefix is None:
        prefix = f"t{next(_counter)}/artifacts"
    store = open_store(
        f"s3://{bucket}/{prefix}",
        endpoint_url=endpoint_url or seaweed.endpoint_url,
        region=seaweed.region,
        access_key_id=seaweed.admin.access_key,
        secret_access_key=seaweed.admin.secret_key,
        max_attempts=max_attempts,
        part_size=SMALL_PART,
        multipart_threshold=SMALL_PART,
        concurrency=4,
    )
    assert isinstance(store, S3Store)
    return store


@pytest.fixture
def s3_store(s3_server: S3Server) -> Iterator[S3Store]:
    """An S3Store on each S3 implementation in turn."""
    store = make_s3_store(s3_server, "oneseek-tests")
    yield store
    store.close()


@pytest.fixture(params=["local", *S3_SERVERS])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Every store test runs against LocalStore, SeaweedFS and moto."""
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
        return
    server: S3Server = (
        request.getfixturevalue("moto")
        if request.param == "moto"
        else request.getfixturevalue("seaweed")
    )
    if request.param == "seaweedfs":
        request.getfixturevalue("fresh_bucket")
    s3 = make_s3_store(server, "oneseek-tests")
    yield s3
    s3.close()


StoreFactory = Callable[[], Store]
