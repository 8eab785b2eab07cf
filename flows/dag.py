"""The RI DAG: ingest -> boundaries (Dask) -> interpret -> evaluate -> report.

Each flow can run alone on an existing store; a re-run with the same inputs does no work twice
(stage fingerprints and per-unit completion records in the store, plus Prefect's task cache).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm import tqdm

from repint.flows.spec import file_sha256
from repint.methods import variant_name
from repint.storage import StoreLock
from repint.tasks.boundaries import prepare_signs, sample_boundaries, sign_chunk
from repint.tasks.centres import compute_centres
from repint.tasks.common import RunSpec, logger, open_store
from repint.tasks.evaluate import (
    assign_unseen,
    evaluate_chunk,
    interpret_centre,
    prepare_evaluation,
    prepare_interpretations,
    summarise_evaluation,
)
from repint.tasks.html import write_html_report
from repint.tasks.ingest import finish_stage, prepare_ingest
from repint.tasks.ingest import ingest_chunk as ingest_chunk_task
from repint.tasks.report import write_report
from repint.tasks.solve import prepare_polytopes, solve_centre
from repint.tasks.study import write_study
from repint.tasks.train import train_model

__all__ = ["boundaries_flow", "evaluate_flow", "ingest_flow", "interpret_flow", "pipeline", "preflight_cluster",
           "study", "task_runner"]


def track(futures: Sequence[PrefectFuture], key: str, description: str) -> list[Any]:
    """Wait for ``futures`` while moving a Prefect progress artifact and a terminal progress bar."""
    if not futures:
        return []
    total = len(futures)
    key = re.sub(r"[^a-z0-9-]+", "-", key.lower().replace("+", "p"))  # Prefect artifact keys: [a-z0-9-]
    art = create_progress_artifact(progress=0.0, key=key, description=description)
    results, step = [], max(1, total // 20)
    with tqdm(total=total, desc=description, file=sys.stderr, leave=False,
              disable=not sys.stderr.isatty()) as bar:
        for i, fut in enumerate(as_completed(futures), 1):
            results.append(fut.result())
            bar.update(1)
            if i % step == 0 or i == total:
                update_progress_artifact(art, progress=100.0 * i / total)
    return results


def task_runner(spec: RunSpec) -> Any:
    """A Dask runner (an existing cluster at ``dask_address``, else a local one on 127.0.0.1) or threads."""
    rt = spec.runtime
    if rt.get("task_runner") == "threads" and not rt.get("dask_address"):
        return ThreadPoolTaskRunner(max_workers=rt.get("n_workers", 2))
    from prefect_dask import DaskTaskRunner

    logging.getLogger("distributed").setLevel(logging.ERROR)  # keep Dask's INFO/WARNING chatter out of the logs
    if rt.get("dask_address"):
        from repint.flows.cluster import check_scheduler

        check_scheduler(rt["dask_address"])  # an unreachable address is a clear error now, not a hang later
        return DaskTaskRunner(address=rt["dask_address"])
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": rt.get("n_workers", 2), "threads_per_worker": 1, "processes": True, "host": "127.0.0.1",
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

    address = spec.runtime["dask_address"]
    results = check_cluster(address, spec.store, reveal_secrets(spec.storage_options),
                            store_id=open_store(spec, mode="r").store_id)
    log, url = logger(), _worker_env().get("PREFECT_API_URL", "").rstrip("/")
    elsewhere = sorted(w for w, r in results.items() if url and (r.get("prefect_api_url") or "").rstrip("/") != url)
    if elsewhere:
        log.warning(f"Dask workers {', '.join(elsewhere)} do not have PREFECT_API_URL={url}: their task runs will "
                    "not show up on this run's Prefect server. Start the workers with that variable set.")
    log.info(f"Dask cluster at {address}: {len(results)} workers with repint and the store {redact_url(spec.store)}")
    return results


@flow(name="ingest", flow_run_name="ingest-{spec.dataset}", task_runner=ThreadPoolTaskRunner(max_workers=2))
def ingest_flow(spec: RunSpec) -> dict[str, int]:
    """Chunks of reference and unseen images -> ψ, logits and predictions in the store."""
    counts = {}
    for split in ("reference", "unseen"):
        info = prepare_ingest(spec, split)
        futs = [ingest_chunk_task.submit(spec, split, c) for c in info["pending"]]
        track(futs, f"ingest-{split}", f"ingest {split}")
        finish_stage(spec, f"ingest-{split}")
        counts[split] = info["n"]
    return counts


@flow(name="boundaries", flow_run_name="boundaries-{spec.dataset}")
def boundaries_flow(spec: RunSpec) -> dict[str, int]:
    """Sample Q (after the centres, which the boundary-search variant needs), then one
    Dask-parallel task per chunk computes that chunk's sign bits."""
    if spec.runtime.get("dask_address"):
        preflight_cluster(spec)  # the store exists now (ingest made it); workers must import repint and reach it
    compute_centres(spec)
    info = sample_boundaries(spec)
    for split in ("reference", "unseen"):
        futs = [sign_chunk.submit(spec, split, c) for c in prepare_signs(spec, split)]
        track(futs, f"signs-{split}", f"signs {split}")
        finish_stage(spec, f"signs-{split}")
    return info


@flow(name="interpret", flow_run_name="interpret-{spec.dataset}", task_runner=ThreadPoolTaskRunner(max_workers=2))
def interpret_flow(spec: RunSpec) -> list[dict]:
    """k-means centres, then one greedy solve per centre."""
    compute_centres(spec)
    futs = [solve_centre.submit(spec, c) for c in prepare_polytopes(spec)]
    out = track(futs, "solve", "solve polytopes")
    finish_stage(spec, "polytopes")
    return out


@flow(name="evaluate", flow_run_name="evaluate-{spec.dataset}", task_runner=ThreadPoolTaskRunner(max_workers=2))
def evaluate_flow(spec: RunSpec) -> dict[str, dict]:
    """Assign unseen images, build each method's interpretations, mask, run the model, AD/AI."""
    assign_unseen(spec)
    results = {}
    for method in spec.evaluation["methods"]:
        futs = [interpret_centre.submit(spec, method, c) for c in prepare_interpretations(spec, method)]
        track(futs, "interpret-" + method.lower(), f"interpret {method}")
        finish_stage(spec, f"interpret-{method}")
        futs = [evaluate_chunk.submit(spec, method, c) for c in prepare_evaluation(spec, method)]
        track(futs, "evaluate-" + method.lower(), f"evaluate {method}")
        finish_stage(spec, f"evaluate-{method}")
        results[method] = summarise_evaluation(spec, method)
    return results


def with_default_model(spec: RunSpec) -> tuple[RunSpec, dict[str, Any]]:
    """Train (or reuse from the cache) the default model when the spec has no checkpoint."""
    if spec.model.get("checkpoint") or spec.model.get("weights"):
        return spec, {}
    m = spec.model
    from repint.config import TrainConfig

    meta = train_model(spec.reference, spec.unseen, m["architecture"], m["image_size"], tuple(m["mean"]),
                       tuple(m["std"]), TrainConfig().model_dump(), device=spec.runtime.get("device", "auto"))
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
    log, timings = logger(), {}
    t0 = time.perf_counter()
    spec, meta = with_default_model(spec)
    timings["train"] = time.perf_counter() - t0
    for name, fl, runner in (("ingest", ingest_flow, None), ("boundaries", boundaries_flow, dask_runner),
                             ("interpret", interpret_flow, None), ("evaluate", evaluate_flow, None)):
        t = time.perf_counter()
        result = (fl.with_options(task_runner=runner) if runner else fl)(spec)
        timings[name] = time.perf_counter() - t
        log.info(f"{name} done in {timings[name]:.1f} s")
    timings["total"] = time.perf_counter() - t0
    extra = {"model_training": {k: meta[k] for k in ("train_accuracy", "test_accuracy", "train_seconds")
                                if k in meta}} if meta else {}
    return write_report(spec, result, timings, extra)


def _store_base(store: str) -> str:
    return store[:-5] if store.endswith(".zarr") else store


def run_spec(spec: RunSpec, run: int, runs: int) -> RunSpec:
    """The spec of run ``run`` of a study: its own seed (k-means, Q sampling, ACE's random set), its
    own reference subsample where the reference set is sampled per class, store and output folder."""
    if runs == 1:
        return spec
    reference = spec.reference
    if reference.get("per_class") is not None and "seed" in reference:
        reference = {**reference, "seed": int(reference["seed"]) + run}
    return spec.model_copy(update={
        "interpretation": {**spec.interpretation, "seed": int(spec.interpretation["seed"]) + run},
        "reference": reference,
        "store": f"{_store_base(spec.store)}-run{run}.zarr", "out_dir": str(Path(spec.out_dir) / f"run-{run}")})


def variant_plan(spec: RunSpec) -> tuple[RunSpec, list[RunSpec]]:
    """RI's variants (``evaluation.variants``): those that change only the orientation are extra
    methods on the run's own store (same polytopes, other heat maps); those that change Q (``q``,
    ``q_sampling``) get a store of their own in which only that variant is evaluated."""
    extra, own = [], []
    for j, v in enumerate(spec.evaluation.get("variants", [])):
        label = variant_name("RI", v)
        if set(v) <= {"orient"}:
            extra.append(label)
            continue
        own.append(spec.model_copy(update={
            "interpretation": {**spec.interpretation, **v},
            "evaluation": {**spec.evaluation, "methods": [label], "case_studies": 0, "variants": []},
            "store": f"{_store_base(spec.store)}-variant{j}.zarr",
            "out_dir": str(Path(spec.out_dir) / f"variant-{j}")}))
    methods = [*spec.evaluation["methods"], *[m for m in extra if m not in spec.evaluation["methods"]]]
    return spec.model_copy(update={"evaluation": {**spec.evaluation, "methods": methods}}), own


def study_specs(spec: RunSpec, runs: int) -> list[RunSpec]:
    """The specs of a study's runs (RI's own-store variants aside): what ``report.html`` reads."""
    main, _ = variant_plan(spec)
    return [run_spec(main, i, runs) for i in range(runs)]


@flow(name="study", flow_run_name="study-{spec.dataset}-{runs}-runs")
def study(spec: RunSpec, runs: int = 1, html: bool = True) -> dict[str, Any]:
    """The whole DAG ``runs`` times with seeds ``seed, seed+1, ...`` (k-means, Q sampling, reference
    subsample), one model, and RI's variants beside RI; reports mean ± std per method like the paper's
    Table 1, every per-image record as CSV, and ``report.html`` (unless ``html`` is false: a caller
    that adds to the summary first, as ``reinterpret`` does, writes the page once itself)."""
    t0 = time.perf_counter()
    spec, _ = with_default_model(spec)
    _, variants = variant_plan(spec)
    specs = study_specs(spec, runs)
    summaries, variant_specs = [], []
    for i, s in enumerate(specs):
        summary = pipeline(s)
        for v in variants:
            vs = run_spec(v, i, runs)
            summary["methods"].update(pipeline(vs)["methods"])
            variant_specs.append((vs, i))
        summaries.append(summary)
    summary = write_study(specs, summaries, spec.out_dir, {"total": time.perf_counter() - t0}, variant_specs)
    if html:
        write_html_report(specs, summary, spec.out_dir)
    return summary
