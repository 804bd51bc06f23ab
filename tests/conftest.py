"""Shared fixtures: the real SeaweedFS S3 server lives in tests/fixtures_s3.py."""

pytest_plugins = ["tests.fixtures_s3"]
