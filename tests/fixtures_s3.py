"""pytest fixtures for storage tests: one SeaweedFS server per session, a store per test.

Load with ``pytest_plugins = ["tests.fixtures_s3"]`` in ``tests/conftest.py``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from oneseek_job.storage import LocalStore, S3Store, Store, open_store
from tests.servers import SeaweedServer

__all__ = ["SMALL_PART", "fresh_bucket", "make_s3_store", "s3_store", "seaweed", "store"]

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
def fresh_bucket(seaweed: SeaweedServer) -> str:
    """Name of an existing bucket shared by the session; stores get a unique prefix each.

    One bucket, not one per test: every SeaweedFS bucket is a collection with its own volumes,
    and growing them per test would make the suite slow.
    """
    name = "oneseek-tests"
    seaweed.client().create_bucket(Bucket=name)
    return name


def make_s3_store(
    seaweed: SeaweedServer,
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
def s3_store(seaweed: SeaweedServer, fresh_bucket: str) -> Iterator[S3Store]:
    store = make_s3_store(seaweed, fresh_bucket)
    yield store
    store.close()


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Every store test runs against LocalStore and S3Store (real SeaweedFS)."""
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
        return
    seaweed: SeaweedServer = request.getfixturevalue("seaweed")
    bucket: str = request.getfixturevalue("fresh_bucket")
    s3 = make_s3_store(seaweed, bucket)
    yield s3
    s3.close()


StoreFactory = Callable[[], Store]
