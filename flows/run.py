"""One run: the default model when the config names none, then the stage flows under the store's
write lock, then the run's report."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from repint.flows.runners import shared_cluster, solve_runner, task_runner
from repint.flows.spec import file_sha256
from repint.flows.stages import boundaries_flow, centres_flow, evaluate_flow, ingest_flow, interpret_flow
from repint.storage import StoreLock
from repint.tasks.common import logger, open_store
from repint.tasks.ingest import ingest_threads
from repint.tasks.report import write_report
from repint.tasks.runspec import RunSpec
from repint.tasks.train import train_model

__all__ = ["pipeline", "with_default_model"]


def with_default_model(spec: RunSpec) -> tuple[RunSpec, dict[str, Any]]:
    """Train (or reuse from the cache) the default model, with the config's ``train`` settings, when
    the spec has neither a checkpoint nor pretrained weights."""
    if spec.model.get("checkpoint") or spec.model.get("weights"):
        return spec, {}
    m = spec.model
    meta = train_model(spec.reference, spec.unseen, m["architecture"], m["image_size"], tuple(m["mean"]),
                       tuple(m["std"]), spec.train, device=spec.runtime.device)
    model = {**m, "checkpoint": meta["checkpoint"], "checkpoint_sha256": file_sha256(meta["checkpoint"])}
    return spec.model_copy(update={"model": model}), meta


@flow(name="pipeline-run", flow_run_name="pipeline-{spec.dataset}")
def pipeline(spec: RunSpec) -> dict[str, Any]:
    """The whole DAG on one spec; writes ``summary.json`` and figures into ``spec.out_dir``.

    Holds the store's write lock (:class:`repint.storage.StoreLock`) from start to end: a second run
    on the same store is refused, a lock left by a run that died is taken over with a warning."""
    dask_runner = task_runner(spec)  # first: an unreachable --dask-address fails before training and ingest
    open_store(spec)  # a store that cannot be reached (no bucket, refused credentials) is a clear error here
    lock = StoreLock(spec.store, spec.storage_options).acquire()
    try:
        if lock.took_over:
            logger().warning(lock.takeover_message)
        return _pipeline(spec, dask_runner)
    finally:
        lock.release()
        if lock.lost:
            logger().error(f"{lock.lost} during this run: check the store with `repint verify`")


def _pipeline(spec: RunSpec, dask_runner: Any) -> dict[str, Any]:
    """The stage flows in order. The boundaries' sign chunks and the interpretations' solves run on the
    Dask runner, a local cluster started once for both (``shared_cluster``) and closed before the
    evaluation; with ``task_runner: threads`` a large interpret stage solves on a process pool."""
    log, timings = logger(), {}
    t0 = time.perf_counter()
    spec, meta = with_default_model(spec)
    timings["train"] = time.perf_counter() - t0

    def timed(name: str, fl: Any, runner: Any = None, since: float | None = None) -> Any:
        t = time.perf_counter() if since is None else since
        result = (fl.with_options(task_runner=runner) if runner else fl)(spec)
        timings[name] = time.perf_counter() - t
        log.info(f"{name} done in {timings[name]:.1f} s")
        return result

    timed("ingest", ingest_flow, ThreadPoolTaskRunner(max_workers=ingest_threads(spec)))  # every ψ writer busy
    timed("centres", centres_flow)
    t = time.perf_counter()
    with shared_cluster(dask_runner) as runner:
        timed("boundaries", boundaries_flow, runner, since=t)  # with the local cluster's start, as before
        solves = solve_runner(spec, runner)
        if isinstance(solves, ProcessPoolTaskRunner):
            log.info(f"solving on {spec.runtime.n_workers} worker processes")
        timed("interpret", interpret_flow, solves)
    result = timed("evaluate", evaluate_flow)
    timings["total"] = time.perf_counter() - t0
    extra = {"model_training": {k: meta[k] for k in ("train_accuracy", "test_accuracy", "train_seconds")
                                if k in meta}} if meta else {}
    return write_report(spec, result, timings, extra)
