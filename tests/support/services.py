"""Which shared services a test may use: Redis for multi-process tests."""

from __future__ import annotations

import os

import pytest


def redis_url() -> str | None:
    """The Redis for tests that need one: the configured one, db 14 in CI, else none."""
    if os.environ.get("WARDEN_TEST_REDIS_URL"):
        return os.environ["WARDEN_TEST_REDIS_URL"]
    if os.environ.get("CI"):
        return "redis://127.0.0.1:6379/14"  # CI always has Redis: fail loudly if it is down
    return None


REDIS = redis_url()
needs_redis = pytest.mark.skipif(
    REDIS is None, reason="needs Redis: set WARDEN_TEST_REDIS_URL (always run in CI)"
)
