"""Session-wide test setup: measured cost tables go to a directory of this test session, never
the user's cache (tests run engines with small limits and random models)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _profile_cache(tmp_path_factory: pytest.TempPathFactory):
    if "NEO_ASYNC_CACHE_DIR" not in os.environ:
        os.environ["NEO_ASYNC_CACHE_DIR"] = str(tmp_path_factory.mktemp("profiles"))
    yield
