"""Where a flow's tasks run: a Dask cluster (an existing one at ``runtime.dask_address``, checked
first, or a local one on 127.0.0.1) or threads."""

from __future__ import annotations

import logging
import os
from typing import Any

from prefect.task_runners import ThreadPoolTaskRunner

from repint.tasks.common import logger, open_store
from repint.tasks.runspec import RunSpec

__all__ = ["preflight_cluster", "task_runner"]


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
