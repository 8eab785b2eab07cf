"""The interpret stage's solves on worker processes (issue 17): one ``solve-centre`` task per centre on a
local Dask cluster of 2 workers (the pipeline's ``shared_cluster``) and, for ``task_runner: threads``, on
Prefect's ``ProcessPoolTaskRunner``; the polytopes equal those solved one by one in this process, and a
stage stopped part-way resumes with only its missing centres. The store is synthetic
(``repint.app.bench.solver.solve_store``: what the stage reads, a sign matrix of real hyperplanes
through random features), the flow and tasks are the real ones, under the store's write lock as in
``pipeline``."""

from __future__ import annotations

import numpy as np
import pytest
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from repint.app.bench.solver import solve_store
from repint.flows.runners import shared_cluster, solve_runner, task_runner
from repint.flows.stages import interpret_flow
from repint.storage import FeatureStore, StoreLock
from repint.storage.layout import POLYTOPES
from repint.tasks.solve import pending_solve_work, prepare_polytopes, solve_centre

pytestmark = pytest.mark.slow

N, Q, V = 3_000, 24, 10
ARRAYS = [path for path, spec in POLYTOPES.of().arrays if spec.per_unit]


def _store(tmp_path, name: str, runner: str = "dask"):
    spec = solve_store(str(tmp_path / f"{name}.zarr"), N, Q, V, seed=3)
    return spec.model_copy(update={"runtime": spec.runtime.model_copy(update={"task_runner": runner,
                                                                             "n_workers": 2})})


def _polytopes(spec) -> dict[str, np.ndarray]:
    store = FeatureStore(spec.store, mode="r")
    return {path: store.read(path) for path in ARRAYS}


def _partial(spec, solved: range) -> None:
    """The stage begun and ``solved`` centres done, as a run stopped part-way leaves it."""
    assert prepare_polytopes.fn(spec) == list(range(V))
    for v in solved:
        solve_centre.fn(spec, v)


def _solve_runs(flow_run_id) -> list[str]:
    """The solve-centre task runs of one flow run, as the Prefect server recorded them (completed)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(
            any_=[flow_run_id])))
    solves = [r for r in runs if r.name.startswith("solve-centre-")]
    assert all(r.state and r.state.is_completed() for r in solves), [(r.name, r.state_name) for r in solves]
    return sorted(r.name for r in solves)


def _interpret(spec, runner) -> tuple[list[dict], object]:
    """The interpret flow on ``runner`` under the store's write lock; its results and flow run id."""
    with StoreLock(spec.store):
        state = interpret_flow.with_options(task_runner=runner)(spec, return_state=True)
    assert state.is_completed(), state
    return state.result(), state.state_details.flow_run_id


@pytest.fixture(scope="module")
def one_by_one(tmp_path_factory) -> dict[str, np.ndarray]:
    """The polytopes solved in this process, one centre after another."""
    spec = _store(tmp_path_factory.mktemp("one-by-one"), "reference")
    _partial(spec, range(V))
    FeatureStore(spec.store).finish_stage(POLYTOPES.of().name)
    out = _polytopes(spec)
    assert (out["polytopes/size"] >= 2).all()  # real greedy paths, not trivial ones
    return out


def _assert_equal(spec, expected: dict[str, np.ndarray]) -> None:
    got = _polytopes(spec)
    for path in ARRAYS:
        np.testing.assert_array_equal(got[path], expected[path], err_msg=path)
    store = FeatureStore(spec.store, mode="r")
    assert store.attrs["stages"]["polytopes"]["complete"] and store.pending_units("polytopes") == []


def test_solves_on_two_dask_workers_equal_one_by_one_and_resume(prefect_harness, one_by_one, tmp_path):
    from distributed import Client

    fresh, stopped = _store(tmp_path, "fresh"), _store(tmp_path, "stopped")
    _partial(stopped, range(4))
    with shared_cluster(task_runner(fresh)) as runner:  # one local cluster for both runs, as in `pipeline`
        assert runner.address
        with Client(runner.address) as client:
            client.get_task_stream()  # the scheduler's task-stream plugin, before the runs
            workers = set(client.scheduler_info(n_workers=-1)["workers"])
            results, run_id = _interpret(fresh, runner)
            stream = client.get_task_stream()
            _, resumed_id = _interpret(stopped, runner)
            resumed = client.get_task_stream()[len(stream):]
    assert len(workers) == 2
    solves = [t for t in stream if str(t["key"]).startswith("solve_centre")]
    assert len(solves) == V and {t["worker"] for t in solves} == workers  # both worker processes solved
    assert sorted(r["centre"] for r in results) == list(range(V))
    assert _solve_runs(run_id) == sorted(f"solve-centre-{v}" for v in range(V))
    _assert_equal(fresh, one_by_one)
    # the stopped stage: only its 6 missing centres were solved, on the cluster
    assert len([t for t in resumed if str(t["key"]).startswith("solve_centre")]) == V - 4
    assert _solve_runs(resumed_id) == sorted(f"solve-centre-{v}" for v in range(4, V))
    _assert_equal(stopped, one_by_one)


def test_threads_runs_solve_a_large_stage_on_a_process_pool_and_resume(prefect_harness, one_by_one, tmp_path):
    spec = _store(tmp_path, "threads", runner="threads")
    threads = task_runner(spec)
    assert isinstance(threads, ThreadPoolTaskRunner)
    assert pending_solve_work(spec) == V * N  # before the stage is begun: every centre
    assert solve_runner(spec, threads) is None  # a small stage stays on the flow's threads
    _partial(spec, range(3))
    assert pending_solve_work(spec) == (V - 3) * N
    # another solver is other inputs: prepare-polytopes will reset the 3 solved centres, so all count
    other = spec.model_copy(update={"interpretation": spec.interpretation.model_copy(update={"solver": "authors"})})
    assert pending_solve_work(other) == V * N
    one = spec.model_copy(update={"runtime": spec.runtime.model_copy(update={"n_workers": 1})})
    assert solve_runner(one, threads, min_work=0) is None  # one process would only add its start
    pool = solve_runner(spec, threads, min_work=0)
    assert isinstance(pool, ProcessPoolTaskRunner)
    results, run_id = _interpret(spec, pool)
    # the children's task runs reached this test's Prefect server; the 3 solved centres were not redone
    assert _solve_runs(run_id) == sorted(f"solve-centre-{v}" for v in range(3, V))
    assert sorted(r["centre"] for r in results) == list(range(3, V))
    _assert_equal(spec, one_by_one)
    assert pending_solve_work(spec) == 0 and pending_solve_work(other) == V * N  # complete for other inputs
