"""Shared fixtures. Prefect runs against one session-scoped test harness (a temporary local server)."""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
# pytest's captured stderr is not a terminal, so runs would print their `[repint] ...` progress lines into
# the one-line errors tests read; tests/test_progress_lines.py sets the mode it tests
os.environ["REPINT_PROGRESS"] = "off"

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


def with_model(spec):  # noqa: ANN001, ANN201
    """The spec with the default model's checkpoint (trained once per session: repint_cache), in a flow
    as in `pipeline`: the train task run outside one makes Prefect warn that it logs without a flow run."""
    from prefect import flow

    from repint.flows.run import with_default_model

    return flow(name="default-model")(with_default_model)(spec)[0]


def tiny_yaml(checkpoint, runner: str = "dask") -> str:  # noqa: ANN001
    """A small digits config file's text (300 images, 10 centres, RI + Grad-CAM) using ``checkpoint``,
    for runs driven through config files (the CLI, deployments, ``reinterpret``)."""
    return (f"name: tiny\ndata: {{kind: digits, limit: 300}}\nmodel: {{checkpoint: {checkpoint}}}\n"
            "train: {epochs: 12}\ninterpretation: {q: 20, interpretations_per_class: 1}\n"
            "evaluation: {methods: [RI, Grad-CAM], case_studies: 1}\n"
            f"runtime: {{task_runner: {runner}, chunk_size: 64}}\n")
