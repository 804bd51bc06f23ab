"""Shared fixtures: the real SeaweedFS S3 server lives in tests/fixtures_s3.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from tests._reliability import TinyWorkspace, build_tiny_workspace

pytest_plugins = ["tests.fixtures_s3", "tests.servers_mlflow"]


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    # structlog's configuration is process-global: a test (or an in-process benchmark) that
    # configures a level or a stream must not decide what the next test's logs look like.
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory: pytest.TempPathFactory) -> TinyWorkspace:
    """One real tiny model and dataset for the CLI fault tests (read-only: built once)."""
    return build_tiny_workspace(tmp_path_factory.mktemp("tiny-ws"))
