"""k-means of the reference features at scale: :func:`repint.centres.dask_kmeans` on a ``LocalCluster``
(127.0.0.1, processes, 2 workers of 1 thread) over a Zarr array of ``N`` synthetic ψ 512x7x7, against
exact in-memory k-means (:func:`repint.centres.kmeans_centres`, scikit-learn's ``KMeans``) at the largest
``N`` that fits this machine's memory, as the ratio of their images per second.

The features are the ψ that :mod:`repint.app.bench.pipeline`'s model computes on its synthetic images,
written as the store writes ψ (``[N, 512, 7, 7]`` float32, zstd level 1, one Zarr chunk per ``chunk``
images) and cached under :func:`bench_data_dir` (200,000 images: 20 GB of float32, a few GB compressed,
minutes to write; a run that stops is resumed, and a larger array serves every smaller ``N``)."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from repint.app.bench.common import Result, load_average, result
from repint.app.bench.pipeline import SCALE_PSI, TreeSampler, psi_and_predictions, scale_model, synthetic_images

D = int(np.prod(SCALE_PSI))
FEATURES_VERSION = 1  # of the cached array's contents: a change of the generator gets a new file
#: bytes :func:`repint.centres.kmeans_centres` holds per byte of float32 features: the features, the float64
#: copy its nearest-centre pass makes, scikit-learn's own working set (measured: 14,235 MiB of process peak
#: for 2.57 GiB of ψ, 5.4x, docs/benchmarks.md)
MEMORY_FACTOR = 5.5
MEMORY_SHARE = 0.65  # of the memory available when the line starts, for the in-memory fit


def bench_data_dir() -> Path:
    """``$REPINT_BENCH_DATA``, else ``$REPINT_CACHE/bench`` (``~/.cache/repint/bench``)."""
    from repint.tasks.train import cache_dir

    return Path(os.environ.get("REPINT_BENCH_DATA") or cache_dir() / "bench")


def synthetic_features(n: int, seed: int = 0, chunk: int = 512, folder: Path | None = None,
                       log: Any = None) -> Path:
    """The cached Zarr array of at least ``n`` rows of ψ (``[rows, 512, 7, 7]`` float32, zstd level 1,
    chunks of ``chunk`` rows): written where missing, resumed where a write stopped, grown for a larger
    ``n``. Returns its path; rows ``0 .. n - 1`` are the same whatever size the array has grown to."""
    import zarr

    from repint.storage import FAST_COMPRESSORS

    path = (folder or bench_data_dir()) / f"kmeans-psi-{'x'.join(map(str, SCALE_PSI))}-seed{seed}-chunk{chunk}-" \
                                          f"v{FEATURES_VERSION}.zarr"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        arr = zarr.open_array(str(path), mode="r+")
        done = int(arr.attrs.get("rows", 0))
    except (FileNotFoundError, ValueError, KeyError):
        arr = zarr.create_array(str(path), shape=(n, *SCALE_PSI), chunks=(chunk, *SCALE_PSI), dtype="float32",
                                compressors=FAST_COMPRESSORS, overwrite=True)
        arr.attrs.update({"rows": 0, "seed": seed, "version": FEATURES_VERSION})
        done = 0
    if done >= n:
        return path
    target = -(-n // chunk) * chunk  # whole chunks, so that a later, larger array extends them unchanged
    if arr.shape[0] < target:
        arr.resize((target, *SCALE_PSI))
    net, t0, step = scale_model(seed), time.perf_counter(), 8 * chunk
    for lo in range(done - done % chunk, target, step):
        hi = min(lo + step, target)
        psi, _ = psi_and_predictions(net, synthetic_images(lo, hi, seed))
        arr[lo:hi] = psi
        arr.attrs["rows"] = hi
        if log and (hi // step) % 25 == 0:
            rate = (hi - done) / (time.perf_counter() - t0)
            log(f"synthetic ψ: {hi:,}/{target:,} rows ({rate:,.0f} rows/s) into {path}")
    return path


def fitting_rows(share: float = MEMORY_SHARE, factor: float = MEMORY_FACTOR) -> int:
    """The most images whose exact in-memory k-means (:data:`MEMORY_FACTOR` x their float32 ψ) fits in
    ``share`` of the memory available now."""
    import psutil

    return int(share * psutil.virtual_memory().available / (factor * D * 4))


def zarr_rows(path: str, lo: int, hi: int) -> np.ndarray:
    """Rows ``[lo, hi)`` of the Zarr array at ``path``, flattened (read on a Dask worker)."""
    import zarr

    return np.asarray(zarr.open_array(path, mode="r")[lo:hi]).reshape(hi - lo, -1)


def _dask_fit(path: Path, n: int, k: int, seed: int, workers: int, chunk: int) -> dict[str, Any]:
    """``dask_kmeans`` of rows ``0 .. n - 1`` on a fresh ``LocalCluster``; the cluster's start is not timed."""
    import logging

    from dask.distributed import Client, LocalCluster

    from repint.centres import dask_kmeans

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        client.wait_for_workers(workers)
        with TreeSampler(os.getpid(), every=0.5) as tree:
            t = time.perf_counter()
            c = dask_kmeans(functools.partial(zarr_rows, str(path)), n, D, k, chunk, seed=seed)
            seconds = time.perf_counter() - t
    return {"n": n, "seconds": round(seconds, 2), "images_per_s": round(n / seconds, 1), "fit": c.fit,
            "algorithm": c.algorithm, "zero_rows": c.zero_rows, "n_centres": len(c.centres),
            "peak_rss_mib": round(max((s[1] for s in tree.samples), default=0) / 1024, 1),
            "peak_pss_mib": round(max((s[2] for s in tree.samples), default=0) / 1024, 1)}


def _memory_fit(path: Path, n: int, k: int, seed: int) -> dict[str, Any]:
    """``kmeans_centres`` of rows ``0 .. n - 1`` read into memory first (the read is not timed)."""
    import zarr

    from repint.centres import kmeans_centres

    x = np.asarray(zarr.open_array(str(path), mode="r")[:n]).reshape(n, D)
    with TreeSampler(os.getpid(), every=0.5) as tree:
        t = time.perf_counter()
        c = kmeans_centres(x, k, seed=seed)
        seconds = time.perf_counter() - t
    return {"n": n, "seconds": round(seconds, 2), "images_per_s": round(n / seconds, 1), "fit": c.fit,
            "algorithm": c.algorithm, "n_centres": len(c.centres),
            "peak_rss_mib": round(max((s[1] for s in tree.samples), default=0) / 1024, 1),
            "features_gib": round(x.nbytes / 2**30, 2)}


def bench_kmeans(n: int, n_clusters: int = 100, seed: int = 0, workers: int = 2, chunk: int = 512,
                 max_memory_rows: int | None = None, folder: Path | None = None) -> Result:
    """``dask_kmeans`` over ``n`` cached synthetic ψ 512x7x7 on a 2-worker ``LocalCluster`` against exact
    in-memory k-means at ``min(n, max_memory_rows or fitting_rows())`` images: the ratio of their images/s
    (reported, no target: the two fit different numbers of images, with different inits and iterations)."""
    import sys

    path = synthetic_features(n, seed, chunk, folder, log=lambda m: print(m, file=sys.stderr, flush=True))
    n_mem = max(min(n, max_memory_rows or fitting_rows()), n_clusters)
    load = [load_average()]
    memory = _memory_fit(path, n_mem, n_clusters, seed)
    load.append(load_average())
    dask_run = _dask_fit(path, n, n_clusters, seed, workers, chunk)
    load.append(load_average())
    ratio = dask_run["images_per_s"] / memory["images_per_s"]
    return result(f"k-means at N = {n:,}, ψ 512x7x7, {n_clusters} centres: dask_kmeans on a LocalCluster "
                  f"({workers} workers) vs scikit-learn in memory at N = {n_mem:,}", ratio, "reported", None,
                  f"{dask_run['images_per_s']:,.0f} img/s ({dask_run['seconds']:,.0f} s)",
                  f"{memory['images_per_s']:,.0f} img/s ({memory['seconds']:,.0f} s, in memory)",
                  dask=dask_run, memory=memory, features=str(path), chunk=chunk, workers=workers,
                  load_average_before_between_after=load,
                  memory_rule=f"{MEMORY_SHARE:g} of MemAvailable / ({MEMORY_FACTOR:g} x {D * 4:,} B per image)")
