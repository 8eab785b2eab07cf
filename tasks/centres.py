"""Interpretations V: k-means centres of the reference features (|V| = per class x C)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from prefect import task

from repint.centres import Centres, choose_kmeans, dask_kmeans, kmeans_centres, streaming_kmeans
from repint.storage import FeatureStore
from repint.storage.layout import CENTRES, INGEST
from repint.tasks.common import logger, open_store
from repint.tasks.runspec import RunSpec
from repint.tasks.stages import stage_fingerprint


@task(name="centres", task_run_name="centres", retries=1)
def compute_centres(spec: RunSpec) -> dict:
    """k-means on flattened ψ(R) (``interpretation.kmeans``, :func:`repint.centres.choose_kmeans`: exact
    in memory for small stores, else chunk by chunk or on the Dask cluster); the input of each
    interpretation is the reference image nearest its centre. Refuses a reference set predicted as a
    single class. The fit used is recorded in the store's ``kmeans`` attribute and the summary."""
    store, stage, ref = open_store(spec), CENTRES.of(), INGEST.of("reference")
    i = spec.interpretation
    shape = store.shape(ref["features"])
    n, d = shape[0], int(np.prod(shape[1:]))
    algorithm = choose_kmeans(i.kmeans, n, d, cluster=bool(spec.runtime.dask_address))
    # exact k-means keeps the fingerprint stores had before the other fits existed
    fp = stage_fingerprint(store, stage, i.interpretations_per_class, i.seed,
                           *(() if algorithm == "exact" else (algorithm,)))
    preds = store.read(ref["predictions"])
    n_classes = store.shape(ref["logits"])[1]
    predicted = np.unique(preds)
    if len(predicted) < 2 and store.all_zero(ref["features"], spec.chunk_size):
        raise ValueError(f"ψ at layer {spec.model['layer']!r} is zero for every reference image (a dead layer: every "
                         "activation is cut by its ReLU), so the model gives every image the same logits and RI has "
                         "nothing to separate. Check the checkpoint (`model.checkpoint`) and the input normalisation "
                         "(`data.mean`, `data.std`), or choose another `model.layer`.")
    if len(predicted) < 2:
        raise ValueError(f"The model predicts every reference image as class {predicted.tolist()}: RI needs at "
                         "least two predicted classes (D(x) would be empty). Use a better-trained model or a "
                         "more varied reference set.")
    if store.stage_complete(stage.name, fp):
        return {"n_centres": store.shape(stage["input_index"])[0]}
    store.prepare(stage, fp, {})
    k, clamped = i.interpretations_per_class * n_classes, []
    if k > n:
        clamped.append(f"interpretation.interpretations_per_class = {i.interpretations_per_class} x {n_classes} "
                       f"classes = {k} interpretations is more than the {n} reference images; clamped to "
                       f"{n}. Lower interpretations_per_class or add reference images.")
        logger().warning(clamped[0])
        k = n
    c = _fit(spec, store, algorithm, k)
    if c.zero_rows:
        logger().warning(f"{c.zero_rows} of {n} reference images have an all-zero ψ at layer "
                         f"{spec.model['layer']!r}: they are one point for k-means and the boundaries.")
    kmeans = {"requested": i.kmeans, "algorithm": c.algorithm, "features_bytes": n * d * 4, **c.fit}
    store.set_attrs(interpretations_clamped=clamped, zero_features_reference=c.zero_rows, kmeans=kmeans)
    logger().info(f"k-means ({c.algorithm}, interpretation.kmeans = {i.kmeans}): {len(c.input_index)} centres of "
                  f"{n} reference images ({n * d * 4 / 2 ** 30:.2f} GiB of ψ)")
    for name, value in (("vectors", c.centres), ("labels", c.labels), ("input_index", c.input_index),
                        ("predicted_class", preds[c.input_index])):
        store.write(stage[name], value)
    store.mark_unit_done(stage.name, 0)
    store.finish_stage(stage.name)
    return {"n_centres": len(c.input_index), "kmeans": c.algorithm}


def _fit(spec: RunSpec, store: FeatureStore, algorithm: str, k: int) -> Centres:
    """The centres by ``algorithm``: in memory, streamed chunk by chunk, or on a Dask cluster."""
    path, seed = INGEST.of("reference")["features"], spec.interpretation.seed
    n, chunk = store.shape(path)[0], spec.chunk_size
    if algorithm == "exact":
        return kmeans_centres(store.read(path), k, seed=seed)

    def read(lo: int, hi: int) -> np.ndarray:
        return store.read(path, slice(lo, hi)).reshape(hi - lo, -1)

    if algorithm == "minibatch":
        return streaming_kmeans(read, n, k, chunk, seed=seed)
    with _client(spec):
        return dask_kmeans(functools.partial(_read_flat, spec), n, int(np.prod(store.shape(path)[1:])), k, chunk,
                           seed=seed)


def _read_flat(spec: RunSpec, lo: int, hi: int) -> np.ndarray:
    """Reference rows ``[lo, hi)`` of ψ, flattened (run on a Dask worker, which opens the store itself)."""
    return open_store(spec, mode="r").read(INGEST.of("reference")["features"], slice(lo, hi)).reshape(hi - lo, -1)


@contextmanager
def _client(spec: RunSpec) -> Iterator[Any]:
    """A client of the cluster at ``runtime.dask_address``, else of a local cluster on 127.0.0.1 with
    ``runtime.n_workers`` processes of one thread, closed afterwards."""
    import logging

    from distributed import Client, LocalCluster

    rt = spec.runtime
    if rt.dask_address:
        with Client(rt.dask_address, set_as_default=True) as client:
            yield client
        return
    with LocalCluster(n_workers=rt.n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as cluster, \
            Client(cluster, set_as_default=True) as client:
        yield client
