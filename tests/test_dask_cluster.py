"""The boundaries flow on an existing Dask cluster (``runtime.dask_address`` / ``--dask-address``):
a real ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1, the sign bits equal bit for bit
to a run on the default local cluster, and the preflight's errors for a worker without RepInt, a
store the workers cannot reach and a scheduler that does not answer."""

from __future__ import annotations

import logging
import socket
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from _servers import dask_cluster
from _servers import stop_process as _stop
from _servers import wait_workers as _wait_workers
from conftest import tiny_config, with_model

from repint.flows.cluster import INSTALL_HINT, STORE_HINT, ClusterError
from repint.storage import FeatureStore

pytestmark = pytest.mark.slow

# a worker on which `import repint` (and every submodule) fails, as in an environment without it
NO_REPINT_PRELOAD = '''
import sys


class _NoRepint:
    def find_spec(self, name, path=None, target=None):
        if name == "repint" or name.startswith("repint."):
            raise ImportError(f"No module named {name!r} (hidden by the test's preload)")
        return None


sys.meta_path.insert(0, _NoRepint())
'''


@pytest.fixture(scope="module")
def cluster(prefect_harness, tmp_path_factory):
    """A real scheduler and two workers (separate processes, as on a cluster), stopped by PID."""
    with dask_cluster(tmp_path_factory.mktemp("dask-cluster"), ("good-0", "good-1")) as c:
        yield c


def _spec(out: Path, address: str | None = None):
    from repint.flows.spec import build_spec

    cfg = tiny_config(160, 1, 20, runner="dask")
    cfg.runtime.chunk_size = 40
    cfg.runtime.dask_address = address
    return with_model(build_spec(cfg, out))


def _ingest_and_boundaries(spec):
    """The flows up to the boundaries as `pipeline` runs them; the boundaries flow run's id."""
    from repint.flows.runners import task_runner
    from repint.flows.stages import boundaries_flow, centres_flow, ingest_flow

    ingest_flow(spec)
    centres_flow(spec)
    runner = task_runner(spec)
    # Dask's INFO chatter stays out of the Prefect logs, on an existing cluster and a local one alike
    assert logging.getLogger("distributed").getEffectiveLevel() >= logging.ERROR
    state = boundaries_flow.with_options(task_runner=runner)(spec, return_state=True)
    assert state.is_completed(), state
    return state.state_details.flow_run_id


def _sign_task_runs(flow_run_id) -> list:
    """The sign-chunk task runs of one boundaries flow run, as the Prefect server recorded them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id])))
    return [r for r in runs if r.name.startswith("signs-")]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def cluster_run(cluster, repint_cache, tmp_path_factory):
    """Ingest + boundaries with the Dask tasks on the cluster; the scheduler's task stream of it and
    the flows' log records."""
    spec = _spec(tmp_path_factory.mktemp("on-cluster"), address=cluster.address)
    logs = _Records()
    logging.getLogger("prefect").addHandler(logs)
    try:
        with cluster.client() as client:
            client.get_task_stream()  # installs the scheduler's task-stream plugin before the run
            t0 = time.time()
            flow_run_id = _ingest_and_boundaries(spec)
            stream = client.get_task_stream(start=t0)
            workers = set(client.scheduler_info(n_workers=-1)["workers"])
    finally:
        logging.getLogger("prefect").removeHandler(logs)
    return spec, stream, workers, [r.getMessage() for r in logs.records], flow_run_id


def test_signs_on_the_cluster_equal_a_local_run_bit_for_bit(cluster, cluster_run, tmp_path):
    spec, stream, workers, messages, flow_run_id = cluster_run
    local = _spec(tmp_path / "local")  # the default runner: a local Dask cluster of its own
    assert local.runtime.dask_address is None
    local_run_id = _ingest_and_boundaries(local)
    a, b = FeatureStore(spec.store, mode="r"), FeatureStore(local.store, mode="r")
    assert a.store_id != b.store_id
    for key in ("boundaries/W", "boundaries/b", "signs/reference", "signs/unseen"):
        x, y = a.read(key), b.read(key)
        assert x.dtype == y.dtype and x.shape == y.shape, key
        np.testing.assert_array_equal(x, y, err_msg=key)
    for stage in ("signs-reference", "signs-unseen"):
        assert a.attrs["stages"][stage]["complete"]

    # every sign chunk ran on the cluster's workers (and only the cluster run's: the local run's
    # tasks went to its own cluster, the task stream would count them twice otherwise)
    n_chunks = sum(-(-a.shape(f"{split}/predictions")[0] // spec.chunk_size) for split in ("reference", "unseen"))
    assert n_chunks == 8
    signs = [t for t in stream if str(t["key"]).startswith("sign_chunk")]
    assert len(signs) == n_chunks, [t["key"] for t in stream]
    assert {t["worker"] for t in signs} <= workers
    with cluster.client() as client:
        after = client.get_task_stream(start=min(s["start"] for t in signs for s in t["startstops"]))
    assert len([t for t in after if str(t["key"]).startswith("sign_chunk")]) == n_chunks

    # the preflight probed every worker and passed quietly (repint, the store, this server's API URL)
    for i in range(2):
        assert "Run out-of-band function 'probe_worker'" in (cluster.tmp / f"good-{i}.log").read_text()
    assert not [m for m in messages if "PREFECT_API_URL" in m], messages
    # and the workers' task runs reported to the test's Prefect server, as the local cluster's do
    for run_id in (flow_run_id, local_run_id):
        runs = _sign_task_runs(run_id)
        assert sorted(r.name for r in runs) == sorted(f"signs-{s}-{c}" for s in ("reference", "unseen")
                                                      for c in range(4)), [r.name for r in runs]
        assert all(r.state and r.state.is_completed() for r in runs), [(r.name, r.state_name) for r in runs]


def test_a_worker_without_repint_is_named(cluster, cluster_run):
    from repint.flows.runners import task_runner
    from repint.flows.stages import boundaries_flow

    spec = cluster_run[0]
    preload = cluster.tmp / "no_repint.py"
    preload.write_text(NO_REPINT_PRELOAD)
    with cluster.client() as client:
        good = _wait_workers(client, 2)
        proc = cluster.start_worker("no-repint", "--preload", str(preload))
        try:
            bad = _wait_workers(client, 3) - good
            with pytest.raises(ClusterError) as err:
                boundaries_flow.with_options(task_runner=task_runner(spec))(spec)
        finally:
            _stop(proc)
            _wait_workers(client, 2)
    msg = str(err.value)
    (worker,) = bad
    assert f"worker {worker} " in msg
    assert "cannot import repint" in msg and INSTALL_HINT in msg
    assert not any(w in msg for w in good)  # the workers with repint pass
    assert STORE_HINT not in msg  # that worker reaches the store; only the import is wrong


def _write_config(path: Path, store: str) -> Path:
    cfg = tiny_config(160, 1, 20, runner="dask")
    cfg.runtime.chunk_size = 40
    cfg.store = store
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def test_a_store_the_workers_cannot_reach(cluster, cluster_run, repint_cache, tmp_path, capsys):
    """fsspec's memory file system lives in one process: the store that `repint run` writes there
    exists for the client, never for the workers."""
    from repint.app.cli import main

    store = f"memory://repint-{uuid.uuid4().hex[:8]}/store.zarr"
    config = _write_config(tmp_path / "memory.yaml", store)
    rc = main(["run", str(config), "--out", str(tmp_path / "out"), "--dask-address", cluster.address])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("repint run: error: "), err
    assert FeatureStore(store, mode="r").attrs["stages"]["ingest-unseen"]["complete"]  # ingest ran, here
    with cluster.client() as client:
        workers = set(client.scheduler_info(n_workers=-1)["workers"])
    for w in workers:
        assert f"worker {w} " in err and f"cannot reach the store {store}" in err
    assert STORE_HINT in err
    assert "signs" not in FeatureStore(store, mode="r").root  # nothing went to the workers


def test_a_local_store_seen_by_the_workers_as_another_copy(cluster, cluster_run, tmp_path):
    """A local path that exists on the workers but holds another store (as on machines without a
    shared file system) is refused too."""
    from repint.flows.cluster import check_cluster

    spec = cluster_run[0]
    with pytest.raises(ClusterError, match="sees another store") as err:
        check_cluster(cluster.address, spec.store, store_id="0" * 32)
    assert STORE_HINT in str(err.value)
    missing = str(tmp_path / "nowhere.zarr")
    with pytest.raises(ClusterError, match="cannot reach the store") as err:
        check_cluster(cluster.address, missing)
    assert f"no directory {missing}" in str(err.value)
    ok = check_cluster(cluster.address, spec.store, store_id=FeatureStore(spec.store, mode="r").store_id)
    assert len(ok) == 2 and all(r["repint_version"] for r in ok.values())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_scheduler_is_a_clear_error(prefect_harness, repint_cache, tmp_path, capsys):
    from repint.app.cli import build_parser, main

    address = f"tcp://127.0.0.1:{_closed_port()}"
    assert build_parser().parse_args(["demo", "--dask-address", address]).dask_address == address
    config = _write_config(tmp_path / "c.yaml", str(tmp_path / "out" / "store.zarr"))
    t0 = time.monotonic()
    rc = main(["run", str(config), "--out", str(tmp_path / "out"), "--dask-address", address])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"repint run: error: Cannot reach the Dask scheduler at {address}" in err
    assert not (tmp_path / "out" / "store.zarr").exists()  # refused before ingest
    assert time.monotonic() - t0 < 120
