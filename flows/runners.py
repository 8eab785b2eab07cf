"""Where a flow's tasks run: a Dask cluster (an existing one at ``runtime.dask_address``, checked
first, or a local one on 127.0.0.1) or threads; the solves of a large interpret stage on worker
processes either way (:func:`solve_runner`)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from repint.tasks.common import logger, open_store
from repint.tasks.runspec import RunSpec
from repint.tasks.solve import pending_solve_work

__all__ = ["PROCESS_POOL_MIN_WORK", "preflight_cluster", "shared_cluster", "solve_runner", "task_runner"]

#: Pending centres x reference images from which a ``threads`` run solves on a pool of processes.
#: A solve is about 0.3 µs per image at |Q| = 50 (65 ms at N = 200,000) and holds the GIL, so threads
#: do not scale; a process pool costs about 40 s on 2 cores (each spawned child imports RepInt, torch
#: and the methods, ~15 s, and the pool takes ~8 s to close), paid back from about a minute of solving.
PROCESS_POOL_MIN_WORK = 200_000_000


def task_runner(spec: RunSpec) -> Any:
    """A Dask runner (an existing cluster at ``dask_address``, else a local one on 127.0.0.1) or threads."""
    rt = spec.runtime
    if rt.task_runner == "threads" and not rt.dask_address:
        return ThreadPoolTaskRunner(max_workers=rt.n_workers)
    from prefect_dask import DaskTaskRunner

    logging.getLogger("distributed").setLevel(logging.ERROR)  # keep Dask's INFO/WARNING chatter out of the logs
    if rt.dask_address:
        from repint.flows.cluster import check_scheduler

        check_scheduler(rt.dask_address)  # an unreachable address is a clear error now, not a hang later
        return DaskTaskRunner(address=rt.dask_address)
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": rt.n_workers, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1",
        "dashboard_address": "127.0.0.1:0", "silence_logs": logging.ERROR, "env": _worker_env()})


def _is_dask(runner: Any) -> bool:
    module = sys.modules.get("prefect_dask.task_runners")  # not imported: no Dask runner exists
    return module is not None and isinstance(runner, module.DaskTaskRunner)


@contextlib.contextmanager
def shared_cluster(runner: Any) -> Iterator[Any]:
    """``runner`` for several flows in a row. A Dask runner of a local cluster starts that cluster once,
    here, and yields a runner connected to it: a flow run given the runner itself would start a cluster
    of its own (seconds), whose workers import RepInt anew (seconds more). Closed on leaving. Other
    runners (threads, an existing cluster's address) are yielded as they are."""
    if not _is_dask(runner) or runner.address or runner.cluster_class:
        yield runner
        return
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    # the runner's options (task_runner: 127.0.0.1 and its dashboard); 127.0.0.1 too where a runner says none
    with LocalCluster(**{"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0", **runner.cluster_kwargs}) as cluster:
        yield DaskTaskRunner(address=cluster.scheduler_address)


def solve_runner(spec: RunSpec, runner: Any, min_work: int = PROCESS_POOL_MIN_WORK) -> Any:
    """The runner of the interpret flow's solves (one task per centre): the run's Dask runner, as for
    the boundaries; with ``task_runner: threads``, a pool of ``n_workers`` processes
    (``ProcessPoolTaskRunner``) when the pending solves are at least ``min_work`` centres x images
    (:func:`repint.tasks.solve.pending_solve_work`), else ``None``: the flow's threads, where a pool
    would cost more than it saves."""
    if _is_dask(runner):
        return runner
    n = spec.runtime.n_workers
    if n > 1 and pending_solve_work(spec) >= min_work:
        return ProcessPoolTaskRunner(max_workers=n)
    return None


def _worker_env() -> dict[str, str]:
    """Environment for local Dask workers: the Prefect API this flow reports to. Without it, each
    worker process would start a temporary Prefect server of its own (seconds each), and its task
    runs would not show up on the run's server."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    url = os.environ.get("PREFECT_API_URL") or (str(ctx.client.api_url) if ctx and ctx.client else "")
    return {"PREFECT_API_URL": url} if url else {}


def preflight_cluster(spec: RunSpec) -> dict[str, dict[str, Any]]:
    """Before tasks go to the existing cluster at ``runtime.dask_address``: every worker imports
    RepInt at this version and reaches this very store (``repint.flows.cluster``; a
    ``ClusterError`` names each worker and what to do). Warns about workers whose task runs would
    not report to this flow's Prefect API."""
    from repint.flows.cluster import check_cluster
    from repint.storage import redact_url, reveal_secrets

    address = spec.runtime.dask_address
    results = check_cluster(address, spec.store, reveal_secrets(spec.storage_options),
                            store_id=open_store(spec, mode="r").store_id)
    log, url = logger(), _worker_env().get("PREFECT_API_URL", "").rstrip("/")
    elsewhere = sorted(w for w, r in results.items() if url and (r.get("prefect_api_url") or "").rstrip("/") != url)
    if elsewhere:
        log.warning(f"Dask workers {', '.join(elsewhere)} do not have PREFECT_API_URL={url}: their task runs will "
                    "not show up on this run's Prefect server. Start the workers with that variable set.")
    log.info(f"Dask cluster at {address}: {len(results)} workers with repint and the store {redact_url(spec.store)}")
    return results
