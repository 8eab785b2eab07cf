"""The sign matrix's measurements: ``sign_chunk`` over a synthetic store against the in-memory BLAS
product, and on a local Dask cluster of 2 workers against 1."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from repint.app.bench.common import Result, alternating, load_average, med, result, rounded


def sign_store(path: str, n: int, feature_shape: tuple[int, ...], q: int, chunk_size: int, seed: int = 0,
               compressors: Any = None, dtype: str = "f4") -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """A store with synthetic ψ ``[n, *feature_shape]`` (ReLU of Gaussians: half zeros, as after a
    ReLU), ``q`` random boundaries, complete ``ingest-reference`` and ``boundaries`` stages, and the
    ``signs-reference`` stage begun: what ``sign_chunk`` reads. Returns ``(spec, W, b, features)``
    with the features as float32 ``[n, D]`` in memory (the in-memory reference's input)."""
    from repint.storage import FeatureStore
    from repint.storage.store import FAST_COMPRESSORS
    from repint.tasks.boundaries import prepare_signs
    from repint.tasks.common import chunks
    from repint.tasks.runspec import RunSpec

    compressors = FAST_COMPRESSORS if compressors is None else compressors  # the ingest's codec
    rng = np.random.default_rng(seed)
    d = int(np.prod(feature_shape))
    store = FeatureStore(path)
    feats = store.create("reference/features", (n, *feature_shape), dtype, (chunk_size, *feature_shape),
                         compressors=compressors)
    flat = np.empty((n, d), dtype=np.float32)
    for lo, hi in chunks(n, chunk_size):
        x = np.maximum(rng.standard_normal((hi - lo, d), dtype=np.float32), 0)
        flat[lo:hi] = x
        feats[lo:hi] = x.reshape(hi - lo, *feature_shape)
    W = rng.standard_normal((q, d), dtype=np.float32)
    b = -np.einsum("qd,qd->q", W, flat[rng.choice(n, q)]).astype(np.float64)  # through reference points
    store.write("reference/predictions", np.zeros(n, dtype=np.int64), chunks=(chunk_size,))
    store.write("boundaries/W", W, chunks=(min(q, 256), d))
    store.write("boundaries/b", b)
    for stage in ("ingest-reference", "boundaries"):
        store.begin_stage(stage, "bench", 1)
        store.mark_unit_done(stage, 0)
        store.finish_stage(stage)
    spec = RunSpec(store=path, out_dir=str(Path(path).parent), dataset="bench", reference={}, unseen={},
                   model={}, interpretation={}, evaluation={}, runtime={"chunk_size": chunk_size})
    prepare_signs.fn(spec, "reference")
    return spec, W, b, flat


def sign_chunk_fn(spec: Any, split: str, chunk: int) -> dict:
    """``sign_chunk``'s function (no Prefect task run): what a Dask worker runs for one chunk."""
    from repint.tasks.boundaries import sign_chunk

    return sign_chunk.fn(spec, split, chunk)


def bench_signs(n: int, feature_shape: tuple[int, ...], q: int, repeats: int, chunk_size: int = 256,
                min_ratio: float = 0.5) -> Result:
    """Sign bits of every chunk (``sign_chunk``: features read from Zarr, packed bits written back)
    against the float32 BLAS product ``features @ W.T`` of the same shapes on features in memory."""
    from repint.signs import sign_bits, unpack_signs
    from repint.tasks.common import chunks

    with tempfile.TemporaryDirectory(prefix="repint-bench-signs-") as tmp:
        spec, W, b, flat = sign_store(str(Path(tmp, "store.zarr")), n, feature_shape, q, chunk_size)
        parts = chunks(n, chunk_size)

        def pipeline() -> None:
            for c in range(len(parts)):
                sign_chunk_fn(spec, "reference", c)

        def blas() -> None:
            for lo, hi in parts:
                flat[lo:hi] @ W.T

        times = alternating({"blas": blas, "pipeline": pipeline}, repeats)
        from repint.storage import FeatureStore

        # where a chunk's time goes: reading (and decoding) its ψ from Zarr against its product
        store = FeatureStore(spec.store)
        read_ms, product_ms = [], []
        for lo, hi in parts:
            t = time.perf_counter()
            x = store.read("reference/features", slice(lo, hi))
            read_ms.append(1e3 * (time.perf_counter() - t))
            t = time.perf_counter()
            x.reshape(hi - lo, -1) @ W.T
            product_ms.append(1e3 * (time.perf_counter() - t))

        stored = FeatureStore(spec.store).read("signs/reference")
        in_memory = np.concatenate([sign_bits(flat[lo:hi], W, b) for lo, hi in parts])
        same = np.array_equal(unpack_signs(stored, q), unpack_signs(in_memory, q))
    if not same:
        raise AssertionError("Sign bits in the store differ from sign_bits of the same features in memory.")
    ips, ref_ips = n / med(times["pipeline"]), n / med(times["blas"])
    ratio = ips / ref_ips
    shape = "x".join(map(str, feature_shape))
    return result(f"sign matrix: {n:,} images, ψ {shape}, |Q| = {q}, per chunk of {chunk_size} from Zarr, "
                  "bits back to Zarr", ratio, f">= {min_ratio:g}x", ratio >= min_ratio, f"{ips:,.0f} img/s",
                  f"{ref_ips:,.0f} img/s (float32 BLAS X_chunk @ W.T in memory)", n=n, feature_shape=feature_shape,
                  q=q, chunk_size=chunk_size, pipeline_times_s=rounded(times["pipeline"]),
                  blas_times_s=rounded(times["blas"]), bits_identical_to_in_memory=True,
                  per_chunk_median_ms={"pipeline": round(1e3 * med(times["pipeline"]) / len(parts), 2),
                                       "read_features_from_zarr": round(med(read_ms), 2),
                                       "product_of_that_chunk": round(med(product_ms), 2),
                                       "blas_reference": round(1e3 * med(times["blas"]) / len(parts), 2)},
                  feature_mib_per_chunk=round(chunk_size * flat.shape[1] * 4 / 2**20, 2))


def bench_signs_dask(n: int, feature_shape: tuple[int, ...], q: int, repeats: int, chunk_size: int = 256,
                     min_ratio: float = 1.6) -> Result:
    """``sign_chunk`` over every chunk on a local Dask cluster (127.0.0.1, processes, one thread per
    worker) of 2 workers against one of 1 worker: both clusters up at once, timed passes alternating
    after a warm-up pass on each; ratio of the median times."""
    import logging

    from dask.distributed import Client, LocalCluster

    from repint.tasks.common import chunks

    logging.getLogger("distributed").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="repint-bench-dask-") as tmp:
        spec, *_ = sign_store(str(Path(tmp, "store.zarr")), n, feature_shape, q, chunk_size)
        n_chunks = len(chunks(n, chunk_size))
        clusters = {k: LocalCluster(n_workers=k, threads_per_worker=1, processes=True, host="127.0.0.1",
                                    dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) for k in (1, 2)}
        try:
            clients = {k: Client(c) for k, c in clusters.items()}
            env = {k: c.run(lambda: {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
                   for k, c in clients.items()}

            def on(k: int) -> Callable[[], None]:
                def run() -> None:
                    futs = clients[k].map(sign_chunk_fn, [spec] * n_chunks, ["reference"] * n_chunks,
                                          range(n_chunks), pure=False)
                    clients[k].gather(futs)
                return run

            times = alternating({"1 worker": on(1), "2 workers": on(2)}, repeats)
            for c in clients.values():
                c.close()
        finally:
            for c in clusters.values():
                c.close()
    one, two = med(times["1 worker"]), med(times["2 workers"])
    ratio = one / two
    shape = "x".join(map(str, feature_shape))
    return result(f"sign matrix on a local Dask cluster, 2 workers vs 1 ({n:,} images, ψ {shape}, |Q| = {q})",
                  ratio, f">= {min_ratio:g}x", ratio >= min_ratio, f"{n / two:,.0f} img/s (2 workers)",
                  f"{n / one:,.0f} img/s (1 worker)", n=n, chunks=n_chunks, times_1_worker_s=rounded(times["1 worker"]),
                  times_2_workers_s=rounded(times["2 workers"]), worker_env=env, cpus=os.cpu_count(),
                  load_average_after=load_average())

