"""Shared fixtures. Prefect runs against one session-scoped test harness (a temporary local server)."""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session (starting one per test costs seconds)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        yield


@pytest.fixture(scope="session")
def repint_cache(tmp_path_factory):
    """A private model cache, so tests train their own small models and never touch the user's."""
    path = tmp_path_factory.mktemp("repint-cache")
    old = os.environ.get("REPINT_CACHE")
    os.environ["REPINT_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("REPINT_CACHE", None)
    else:
        os.environ["REPINT_CACHE"] = old


def tiny_config(limit: int, per_class: int, q: int, runner: str = "threads", **interpretation):
    """A digits config small enough for an end-to-end test."""
    from repint.config import Config

    cfg = Config(name="test")
    cfg.data.limit = limit
    cfg.interpretation.interpretations_per_class = per_class
    cfg.interpretation.q = q
    for key, value in interpretation.items():
        setattr(cfg.interpretation, key, value)
    cfg.runtime.task_runner = runner
    return cfg
