"""RepInt's performance suite: every stage as a ratio against its limit, measured side by side.

Each measurement returns a dict ``{stage, measured, reference, ratio, target, pass, details}``: the
stage's own figure, the limit it is measured against (plain torch inference, an in-memory BLAS
product, a reference implementation, one Dask worker, ...) measured in the same run, alternating
with it, and their ratio. ``main`` prints a markdown table and writes JSON and markdown files.
``repint bench`` and ``python benchmarks/run.py`` run it; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["GROUPS", "main", "plan", "table"]

Result = dict[str, Any]
DEFAULT_OUT = Path("benchmarks") / "results"
CHILD_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def result(stage: str, ratio: float | None, target: str, passed: bool | None, measured: str, reference: str,
           **details: Any) -> Result:
    """One line of the table: the stage's figure, its reference's, their ratio (or the value a limit
    applies to), the target and whether it is met; ``details`` go to the JSON only."""
    return {"stage": stage, "measured": measured, "reference": reference, "ratio": ratio, "target": target,
            "pass": passed, "details": details}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Wall times of ``repeats`` calls of ``fn`` after one untimed warm-up call, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times, out


def alternating(fns: dict[str, Callable[[], Any]], repeats: int, warm_up: bool = True) -> dict[str, list[float]]:
    """Wall times of ``repeats`` rounds in which each of ``fns`` runs once, in turn, so that the
    machine's load drifts alike for all of them (after one untimed warm-up round)."""
    if warm_up:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            gc.collect()
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return times


def med(times: list[float]) -> float:
    return statistics.median(times)


def rounded(times: list[float], scale: float = 1.0, digits: int = 4) -> list[float]:
    return [round(scale * t, digits) for t in times]


# ---------------------------------------------------------------------------------------------- solver
def sign_problem(n: int, q: int, seed: int = 0, dim: int = 32, n_classes: int = 10
                 ) -> tuple[np.ndarray, int, np.ndarray]:
    """A realistic solver input: random features, random hyperplanes through the data cloud, classes
    from a random linear labelling. Returns ``(signs [n, q], input_index, other_class)``."""
    from repint.signs import sign_matrix

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    w = rng.standard_normal((q, dim), dtype=np.float32)
    b = 0.5 * rng.standard_normal(q)
    pred = (x @ rng.standard_normal((dim, n_classes), dtype=np.float32)).argmax(1)
    return sign_matrix(x, w, b), 0, pred != pred[0]


def bench_solver(n: int, q: int, limit_s: float, repeats: int) -> Result:
    """Median time of one ``greedy_polytope`` solve (one centre) on an ``n x q`` sign matrix."""
    from repint.solver import greedy_polytope

    signs, i, other = sign_problem(n, q)
    times, poly = timed(lambda: greedy_polytope(signs, i, other), repeats)
    if len(poly.boundaries) < 2:
        raise RuntimeError(f"Trivial greedy path at N={n}, Q={q}: the benchmark input needs a harder problem.")
    s = med(times)
    return result(f"solver at scale, one centre (N={n:,}, Q={q})", s / limit_s, f"under {limit_s:g} s",
                  s < limit_s, f"{1e3 * s:,.0f} ms", f"limit {limit_s:g} s", n=n, q=q, times_ms=rounded(times, 1e3, 2),
                  polytope_size=len(poly.boundaries), tau=poly.tau, covered=poly.n_covered, purity=poly.purity)


def bench_solver_vs_dense(n: int, q: int, min_ratio: float, repeats: int) -> Result:
    """Speed-up of ``greedy_polytope`` over the straightforward boolean-matrix numpy greedy
    ``greedy_polytope_dense`` on the same input; identical boundaries, covered set and tau asserted."""
    from repint.solver import greedy_polytope, greedy_polytope_dense

    signs, i, other = sign_problem(n, q)
    fast_times, fast = timed(lambda: greedy_polytope(signs, i, other), repeats)
    dense_times = []
    for _ in range(1 if repeats < 5 else 2):  # seconds each
        t = time.perf_counter()
        dense = greedy_polytope_dense(signs, i, other)
        dense_times.append(time.perf_counter() - t)
    identical = (np.array_equal(fast.boundaries, dense.boundaries) and np.array_equal(fast.covered, dense.covered)
                 and fast.tau == dense.tau)
    if not identical:
        raise AssertionError(f"greedy_polytope and greedy_polytope_dense disagree at N={n}, Q={q}.")
    fast_s, dense_s = med(fast_times), med(dense_times)
    ratio = dense_s / fast_s
    return result(f"solver, one centre (N={n:,}, Q={q}), identical result asserted", ratio,
                  f">= {min_ratio:g}x faster", ratio >= min_ratio, f"{1e3 * fast_s:,.1f} ms",
                  f"{1e3 * dense_s:,.0f} ms (boolean-matrix numpy greedy)", fast_ms=rounded(fast_times, 1e3, 2),
                  dense_ms=rounded(dense_times, 1e3, 1), polytope_size=len(fast.boundaries), identical=True)


# ---------------------------------------------------------------------------------------------- ingest
def rss_kib(field: str = "VmRSS") -> int:
    """Current (``VmRSS``) or peak (``VmHWM``) resident set size of this process, in KiB."""
    try:
        with open("/proc/self/status") as f:
            return int(re.search(rf"^{field}:\s+(\d+)", f.read(), re.M).group(1))  # type: ignore[union-attr]
    except OSError:
        import psutil  # not Linux: only the current RSS is available, peaks are sampled

        return psutil.Process().memory_info().rss // 1024


class PeakRSS:
    """Peak RSS inside a ``with`` block: Linux resets the high-water mark (``/proc/self/clear_refs``),
    elsewhere a thread samples the RSS every millisecond."""

    def __enter__(self) -> PeakRSS:
        self.peak, self._stop = 0, threading.Event()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method, self._thread = "VmHWM after clear_refs", None
        except OSError:
            self.method, self._thread = "sampled every 1 ms", threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, rss_kib())

    def __exit__(self, *exc: object) -> None:
        if self._thread is None:
            self.peak = rss_kib("VmHWM")
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_kib())


def ingest_child(args: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: the ingest flow's work for the reference split, its tasks called
    directly (``.fn``, no Prefect), with the memory accounted step by step (KiB)."""
    import torch  # noqa: F401  (imported before the baseline: its import is not the ingest's)

    from repint.config import Config
    from repint.flows.spec import build_spec
    from repint.tasks.common import load_split, source
    from repint.tasks.ingest import finish_stage, ingest_chunk, prepare_ingest

    mem = {"after_imports": rss_kib()}
    cfg = Config(name="bench")
    cfg.data.kind, cfg.data.reference, cfg.data.unseen = "arrays", args["reference"], args["unseen"]
    cfg.model.checkpoint = args["checkpoint"]
    cfg.runtime.task_runner, cfg.runtime.device = "threads", "cpu"
    spec = build_spec(cfg, args["out"])
    source(spec, "reference")
    load_split(spec)
    gc.collect()
    mem["baseline"] = rss_kib()  # imports + the whole source in memory (ArraySource) + the model
    t = time.perf_counter()
    with PeakRSS() as peak:
        info = prepare_ingest.fn(spec, "reference")
        for c in info["pending"]:
            ingest_chunk.fn(spec, "reference", c)
        finish_stage.fn(spec, "ingest-reference")
    mem["peak_during_ingest"], mem["after_ingest"] = peak.peak, rss_kib()
    mem["ingest_increment"] = mem["peak_during_ingest"] - mem["baseline"]
    return {"n": info["n"], "chunks": len(info["pending"]), "chunk_size": spec.chunk_size,
            "seconds": time.perf_counter() - t, "peak_method": peak.method, "rss_kib": mem}


def write_images(path: Path, n: int, seed: int, size: int = 32) -> str:
    rng = np.random.default_rng(seed)
    np.savez(path, images=rng.random((n, 3, size, size), dtype=np.float32),
             labels=np.arange(n, dtype=np.int64) % 10)
    return str(path)


def run_children(jobs: list[dict[str, Any]], env: dict[str, str], timeout: float = 900) -> list[dict[str, Any]]:
    """:func:`ingest_child` in one fresh process per job, run concurrently (RSS is per process)."""
    procs = [subprocess.Popen([sys.executable, "-m", "repint.bench", "--ingest-child", json.dumps(job)], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **CHILD_ENV, **env})
             for job in jobs]
    outs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=timeout)
        if proc.returncode:
            raise RuntimeError(f"ingest child failed ({proc.returncode}):\n{stderr[-3000:]}")
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    return outs


def bench_ingest_memory(n: int, factor: int = 10, max_ratio: float = 1.2, fixed_mmap_threshold: bool = False
                        ) -> Result:
    """Ratio of the ingest's peak-RSS increment for ``factor * n`` images to that for ``n`` (fresh processes).

    With ``fixed_mmap_threshold``, glibc's malloc gets a fixed mmap threshold (128 KiB) from the
    environment too (the ingest task sets it itself, :func:`repint.tasks.common.bound_chunk_memory`)."""
    import torch

    from repint.nets import VGGNet

    env = {"MALLOC_MMAP_THRESHOLD_": "131072"} if fixed_mmap_threshold else {}
    with tempfile.TemporaryDirectory(prefix="repint-bench-ingest-") as tmp:
        ckpt = Path(tmp, "vgg-small.pt")
        torch.manual_seed(0)
        torch.save(VGGNet(num_classes=10, image_size=32).state_dict(), ckpt)
        unseen = write_images(Path(tmp, "unseen.npz"), 20, seed=1)
        runs = run_children([{"reference": write_images(Path(tmp, f"reference-{size}.npz"), size, seed=0),
                              "unseen": unseen, "checkpoint": str(ckpt), "out": str(Path(tmp, f"out-{size}"))}
                             for size in (n, factor * n)], env)
    small, big = (r["rss_kib"]["ingest_increment"] for r in runs)
    ratio = big / max(small, 1)
    stage = f"ingest memory: peak RSS increment at {factor * n:,} vs {n:,} images" + (
        ", malloc mmap threshold from the environment" * fixed_mmap_threshold)
    return result(stage, ratio, f"<= {max_ratio:g}x (within {100 * (max_ratio - 1):.0f}%)", ratio <= max_ratio,
                  f"{big / 1024:,.1f} MiB", f"{small / 1024:,.1f} MiB", env=env,
                  increments_mib=[round(r["rss_kib"]["ingest_increment"] / 1024, 1) for r in runs], runs=runs)


def ingest_setup(tmp: str, n: int, size: int = 32, seed: int = 0) -> dict[str, Any]:
    """Random ``n`` images (3 x size x size, ``.npz``), a freshly initialised ``vgg-small``
    checkpoint, and a function making the ``RunSpec`` of a fresh store (``data.kind: arrays``, CPU)."""
    import torch

    from repint.config import Config
    from repint.flows.spec import build_spec
    from repint.nets import VGGNet

    ckpt = Path(tmp, "vgg-small.pt")
    torch.manual_seed(seed)
    torch.save(VGGNet(num_classes=10, image_size=size).state_dict(), ckpt)
    ref = write_images(Path(tmp, "reference.npz"), n, seed=seed, size=size)
    uns = write_images(Path(tmp, "unseen.npz"), 20, seed=seed + 1, size=size)
    counter = iter(range(10**6))

    def spec() -> Any:
        cfg = Config(name="bench")
        cfg.data.kind, cfg.data.reference, cfg.data.unseen = "arrays", ref, uns
        cfg.data.image_size = size
        cfg.model.checkpoint = str(ckpt)
        cfg.runtime.task_runner, cfg.runtime.device = "threads", "cpu"
        out = Path(tmp, f"out-{next(counter)}")
        shutil.rmtree(out, ignore_errors=True)
        return build_spec(cfg, str(out))

    return {"spec": spec}


def run_ingest(spec: Any, workers: int) -> int:
    """The ingest flow's work for the reference split, its tasks called directly (``.fn``, no Prefect
    orchestration) on a pool of ``workers`` threads as the flow's ``ThreadPoolTaskRunner`` does."""
    from concurrent.futures import ThreadPoolExecutor

    from repint.tasks.ingest import finish_stage, ingest_chunk, prepare_ingest

    info = prepare_ingest.fn(spec, "reference")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda c: ingest_chunk.fn(spec, "reference", c), info["pending"]))
    finish_stage.fn(spec, "ingest-reference")
    return info["n"]


def bench_ingest_throughput(n: int, repeats: int, min_ratio: float = 0.85, workers: int = 2) -> Result:
    """Ingest throughput (ψ, logits, predictions of ``n`` images into a fresh Zarr store: every task
    of the stage, ``workers`` threads as in the flow) against plain ``batched_forward`` of the same
    model over the same images held in memory; alternating rounds, medians."""
    import torch

    from repint.tasks.common import batched_forward, load_split, source

    with tempfile.TemporaryDirectory(prefix="repint-bench-ingest-") as tmp:
        setup = ingest_setup(tmp, n)
        spec0 = setup["spec"]()
        sm = load_split(spec0)
        images = source(spec0, "reference").load(np.arange(n))
        bs = int(spec0.runtime["batch_size"])
        dev = torch.device("cpu")

        def plain() -> None:
            batched_forward(sm.model, images, bs, dev)

        def ingest() -> None:
            run_ingest(setup["spec"](), workers)

        times = alternating({"plain": plain, "ingest": ingest}, repeats)
        chunk_size = spec0.chunk_size
    ingest_ips, plain_ips = n / med(times["ingest"]), n / med(times["plain"])
    ratio = ingest_ips / plain_ips
    return result(f"ingest: ψ, logits, predictions of {n:,} images (3x32x32, vgg-small) into Zarr", ratio,
                  f">= {min_ratio:g}x", ratio >= min_ratio, f"{ingest_ips:,.0f} img/s",
                  f"{plain_ips:,.0f} img/s (plain batched forward in memory)", n=n, workers=workers,
                  chunk_size=chunk_size, batch_size=bs, ingest_times_s=rounded(times["ingest"]),
                  plain_times_s=rounded(times["plain"]))


# ---------------------------------------------------------------------------------------------- sign matrix
def sign_store(path: str, n: int, feature_shape: tuple[int, ...], q: int, chunk_size: int, seed: int = 0,
               compressors: Any = None, dtype: str = "f4") -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """A store with synthetic ψ ``[n, *feature_shape]`` (ReLU of Gaussians: half zeros, as after a
    ReLU), ``q`` random boundaries, complete ``ingest-reference`` and ``boundaries`` stages, and the
    ``signs-reference`` stage begun: what ``sign_chunk`` reads. Returns ``(spec, W, b, features)``
    with the features as float32 ``[n, D]`` in memory (the in-memory reference's input)."""
    from repint.storage import FeatureStore
    from repint.storage.store import FAST_COMPRESSORS
    from repint.tasks.boundaries import prepare_signs
    from repint.tasks.common import RunSpec, chunks

    compressors = FAST_COMPRESSORS if compressors is None else compressors  # the ingest's codec
    rng = np.random.default_rng(seed)
    d = int(np.prod(feature_shape))
    store = FeatureStore(path)
    feats = store.root.create_array("reference/features", shape=(n, *feature_shape), dtype=dtype,
                                    chunks=(chunk_size, *feature_shape), compressors=compressors)
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


# ---------------------------------------------------------------------------------------------- evaluation
@functools.lru_cache(maxsize=1)
def eval_setup(seed: int = 0) -> dict[str, Any]:
    """What the evaluation benchmarks share: a randomly initialised ``vgg-small`` (``build_model``) in
    the pipeline's :class:`~repint.model.Classifier` wrapper, split at ``net.psi_layer`` and bound as the
    pipeline's tasks bind it (``G ∘ ψ``, ψ the output of its submodule ``psi``); the
    digits' unseen split (32x32, RGB) with their ψ features (as the ingest stores them: computed here
    once, never timed); reference images for the input image and ACE's cluster and random images."""
    import torch

    from repint.data import DigitsSource
    from repint.methods.gradcam import layer_activations_batch
    from repint.model import PSI_MODULE, Classifier, split_model
    from repint.nets import build_model

    torch.manual_seed(seed)
    ref, unseen = DigitsSource(split="reference"), DigitsSource(split="unseen")
    ref_images = ref.load(np.arange(len(ref.labels)))
    net = build_model("vgg-small", 10, 32)
    mean = tuple(float(v) for v in ref_images.mean(axis=(0, 2, 3)))
    std = tuple(float(v) for v in ref_images.std(axis=(0, 2, 3)))
    split = split_model(Classifier(net, mean, std).eval(), net.psi_layer)
    model, layer = split.composed, PSI_MODULE
    images = unseen.load(np.arange(len(unseen.labels)))
    return {"model": model, "layer": layer, "images": images, "features": layer_activations_batch(model, layer, images),
            "ref_images": ref_images, "ref_labels": ref.labels}


def interpretation_input(setup: dict[str, Any], ace_images: int, n_boundaries: int = 5, seed: int = 0) -> Any:
    """The centre's :class:`InterpretationInput`: reference image 0, its ψ and predicted class;
    ``n_boundaries`` random hyperplanes in ψ-space (RI); the first ``ace_images`` other reference
    images of its label and as many of other labels (ACE's cluster and random images)."""
    import torch

    from repint.methods import InterpretationInput
    from repint.methods.gradcam import layer_activations

    model, layer, ref, labels = setup["model"], setup["layer"], setup["ref_images"], setup["ref_labels"]
    image = ref[0]
    feats = layer_activations(model, layer, image)
    with torch.no_grad():
        cls = int(model(torch.as_tensor(image[None])).argmax(1)[0])
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n_boundaries, feats.size)).astype(np.float32)
    b = -(W @ feats.reshape(-1)) + rng.standard_normal(n_boundaries).astype(np.float32)
    same, other = np.flatnonzero(labels == labels[0])[1:], np.flatnonzero(labels != labels[0])
    return InterpretationInput(model=model, layer=layer, image=image, features=feats, predicted_class=cls,
                               boundaries_W=W, boundaries_b=b, cluster_images=ref[same[:ace_images]],
                               random_images=ref[rng.choice(other, ace_images, replace=False)])


def _once(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def segment_cache_reset(method: str) -> Callable[[], None] | None:
    """ACE keeps each image's SLIC labels and patch activations in a process-wide cache
    (``repint.methods.ace._CACHE``, keyed by the image's bytes); a fresh cache before each call times a
    run's first evaluation of its images, not the cache. ``None`` for methods without one."""
    from repint.methods import ace

    if method != "ACE" or not hasattr(ace, "_CACHE"):
        return None

    def reset() -> None:
        ace._CACHE = type(ace._CACHE)()

    return reset


def bench_evaluation(method: str, n: int, min_ratio: float | None, repeats: int, ace_images: int = 20,
                     batch_size: int = 128, fraction: float = 0.2) -> Result:
    """The evaluation stage's throughput for one method next to plain batched inference of the same
    ``n`` images.

    Timed per call, ``evaluate_chunk``'s work for one centre without the store: ``keep_masks`` for the
    ``n`` images from their precomputed ψ and the centre's interpretation, ``mask_images``,
    ``batched_forward`` of the masked images. The interpretation itself (``interpret``, its own
    stage, once per centre) is computed beforehand and reported apart. Plain: ``batched_forward`` of
    the ``n`` images. One untimed warm-up of each, then ``repeats`` rounds alternating plain and
    method; images/s from the medians. A method's per-image cache (ACE's segments) is emptied
    before each call; one more call with it full is reported as ``warm_cache_images_per_s``."""
    from repint.methods import get_method
    from repint.metrics import mask_images
    from repint.tasks.common import batched_forward

    setup = eval_setup()
    model, layer = setup["model"], setup["layer"]
    images, feats = setup["images"][:n], setup["features"][:n]
    n = len(images)
    inp = interpretation_input(setup, ace_images)
    m = get_method(method).bind(model, layer)
    dev = next(model.parameters()).device
    interpret_s = _once(lambda: m.interpret(inp))
    t = time.perf_counter()
    interp = m.interpret(inp)
    interpret_s = min(interpret_s, time.perf_counter() - t)
    phases: list[dict[str, float]] = []

    def evaluate(images: np.ndarray = images, feats: np.ndarray = feats) -> None:
        t1 = time.perf_counter()
        keep = m.keep_masks(interp, images, feats, fraction)
        t2 = time.perf_counter()
        batched_forward(model, mask_images(images, keep), batch_size, dev)
        phases.append({"keep_masks": t2 - t1, "mask_and_forward": time.perf_counter() - t2})

    def plain() -> np.ndarray:
        return batched_forward(model, images, batch_size, dev)

    reset = segment_cache_reset(method) or (lambda: None)
    plain()  # warms the batch shapes of the masked forward too
    evaluate(images[:2], feats[:2])  # small: ACE's warm-up would take seconds
    phases.clear()
    plain_times, method_times = [], []
    for _ in range(repeats):
        gc.collect()
        reset()
        plain_times.append(_once(plain))
        method_times.append(_once(evaluate))
    phase_medians = {k: round(statistics.median(p[k] for p in phases), 4) for k in phases[0]}
    warm = None if segment_cache_reset(method) is None else n / _once(evaluate)  # cache full from the last call
    plain_ips, method_ips = n / med(plain_times), n / med(method_times)
    ratio = method_ips / plain_ips
    extra = f", {ace_images} discovery + {ace_images} random images" if method == "ACE" else ""
    stage = f"evaluation {method} (keep-masks + masked forward, N={n:,}{extra})"
    target = "none (reported)" if min_ratio is None else f">= {min_ratio:g}x"
    passed = None if min_ratio is None else ratio >= min_ratio
    details: dict[str, Any] = {
        "method": method, "n": n, "batch_size": batch_size, "keep_fraction": fraction,
        "images_per_s": round(method_ips, 1), "plain_images_per_s": round(plain_ips, 1),
        "times_s": rounded(method_times), "plain_times_s": rounded(plain_times),
        "phases_median_s": phase_medians, "interpret_once_s": round(interpret_s, 4)}
    if method == "ACE":
        details["ace_images"] = ace_images
        details["concepts"] = len(interp.get("concepts", ()))
    if warm is not None:
        details["segment_cache"] = "emptied before each timed call"
        details["warm_cache_images_per_s"] = round(warm, 1)
    if method == "RI":
        details["boundaries"] = len(inp.boundaries_W)
    return result(stage, ratio, target, passed, f"{method_ips:,.0f} img/s",
                  f"{plain_ips:,.0f} img/s (plain batched inference)", **details)


def bench_scorecam_batching(min_ratio: float, repeats: int) -> Result:
    """Score-CAM's channel passes in batches (``ScoreCAM.batch_size`` masked images per forward) over
    one forward per channel (``batch_size=1``, the same code): ratio of the median times of
    ``score_cam_weights`` on the centre's input image, alternating; the weights are asserted equal."""
    from repint.methods.gradcam import layer_activations
    from repint.methods.scorecam import ScoreCAM, score_cam_weights

    setup = eval_setup()
    inp = interpretation_input(setup, ace_images=0)
    acts = layer_activations(inp.model, inp.layer, inp.image)
    batch = ScoreCAM.batch_size

    def batched() -> np.ndarray:
        return score_cam_weights(inp.model, inp.image, acts, inp.predicted_class, batch)

    def per_channel() -> np.ndarray:
        return score_cam_weights(inp.model, inp.image, acts, inp.predicted_class, 1)

    batched()  # warm-up; batch-1 passes were warmed by interpretation_input (on a loaded machine they take seconds)
    fast_times, slow_times = [], []
    for _ in range(repeats):
        gc.collect()
        t = time.perf_counter()
        fast = batched()
        fast_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        slow = per_channel()
        slow_times.append(time.perf_counter() - t)
    diff = float(np.abs(fast - slow).max())
    if not np.allclose(fast, slow, rtol=1e-5, atol=1e-9):
        raise AssertionError(f"Score-CAM weights differ between batched and per-channel passes (max |diff| {diff:g}).")
    fast_s, slow_s = med(fast_times), med(slow_times)
    ratio = slow_s / fast_s
    k = acts.shape[0]
    return result(f"Score-CAM weights, K={k} channels: one batched pass ({batch} per forward) vs one pass per channel",
                  ratio, f">= {min_ratio:g}x", ratio >= min_ratio, f"{1e3 * fast_s:,.1f} ms",
                  f"{1e3 * slow_s:,.1f} ms (one forward per channel)", channels=k, batch_size=batch,
                  batched_times_ms=rounded(fast_times, 1e3, 2), per_channel_times_ms=rounded(slow_times, 1e3, 2),
                  max_abs_diff=diff, bitwise_identical=bool(np.array_equal(fast, slow)), equal_rtol_1e_5=True)


# ---------------------------------------------------------------------------------------------- demo
def bench_demo(limit_s: float = 180, timeout: float = 1200) -> Result:
    """``repint demo`` end to end in a subprocess with an empty model cache (training included)."""
    stage = "demo end to end (training included)"
    with tempfile.TemporaryDirectory(prefix="repint-bench-demo-") as tmp:
        out = Path(tmp, "demo")
        env = {**os.environ, **CHILD_ENV, "REPINT_CACHE": str(Path(tmp, "cache"))}
        cmd = [sys.executable, "-m", "repint.cli", "demo", "--out", str(out)]
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            return result(stage, None, f"< {limit_s:g} s", False, "n/a", f"limit {limit_s:g} s",
                          error=f"timed out after {timeout:g} s")
        wall = time.perf_counter() - t
        if proc.returncode:
            return result(stage, wall / limit_s, f"< {limit_s:g} s", False, f"{wall:.0f} s", f"limit {limit_s:g} s",
                          error=f"exit code {proc.returncode}", stderr_tail=proc.stderr[-3000:])
        timings = json.loads(Path(out, "summary.json").read_text()).get("timings_s", {})
    return result(stage, wall / limit_s, f"< {limit_s:g} s", wall < limit_s, f"{wall:.0f} s", f"limit {limit_s:g} s",
                  timings_s={k: round(v, 2) for k, v in timings.items()})


# ---------------------------------------------------------------------------------------------- report
def table(results: list[Result]) -> str:
    """The markdown table: stage, measured, reference, ratio, target, met."""
    lines = ["| stage | measured | reference | ratio | target | met |", "|---|---:|---:|---:|---|:---:|"]
    for r in results:
        met = {True: "yes", False: "**no**", None: "-"}[r["pass"]]
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        if r["target"].startswith("under"):
            ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f} of limit"
        cells = [str(c).replace("|", "\\|") for c in (r["stage"], r["measured"], r["reference"])]
        lines.append(f"| {cells[0]} | {cells[1]} | {cells[2]} | {ratio} | {r['target']} | {met} |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import torch

    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "numpy": np.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


# Evaluation: throughput of the evaluation stage over plain batched inference of the same images.
EVAL_MIN_RATIO: dict[str, float | None] = {"RI": 0.7, "Grad-CAM": 0.7, "Grad-CAM++": 0.7, "Score-CAM": 0.7,
                                           "ACE": None}
SCORECAM_MIN_RATIO = 5.0
GROUPS = ("ingest", "signs", "dask", "solver", "evaluation", "score-cam", "memory", "demo")
DEFAULT_GROUPS = GROUPS[:-1]  # the demo (minutes, training included) only when asked for
EVAL_METHODS = ("RI", "Grad-CAM", "Grad-CAM++", "Score-CAM", "ACE")  # ACE last
PSI_SHAPE = (64, 8, 8)  # vgg-small's ψ on 32x32 images (the demo's)


def plan(quick: bool, only: set[str] | None = None) -> list[tuple[str, Callable[[], Result]]]:
    """The measurements to run, in the order of the issue's table, as ``(group, fn)``; ``only`` keeps
    those of the named groups (:data:`GROUPS`; default :data:`DEFAULT_GROUPS`)."""
    only = set(DEFAULT_GROUPS) if only is None else only
    repeats = 3 if quick else 5
    n_ingest = 1_024 if quick else 4_096
    n_signs = 20_000 if quick else 100_000
    n_eval, eval_repeats = (256, 3) if quick else (512, 5)
    ace_n, ace_images, ace_repeats = (8, 5, 1) if quick else (12, 6, 2)
    steps: list[tuple[str, Callable[[], Result]]] = [
        ("ingest", lambda: bench_ingest_throughput(n_ingest, repeats)),
        ("signs", lambda: bench_signs(n_signs, PSI_SHAPE, 50, repeats)),
        ("signs", lambda: bench_signs(n_signs // 5, PSI_SHAPE, 1000, repeats)),
        ("dask", lambda: bench_signs_dask(n_signs // 5, PSI_SHAPE, 1000, repeats)),
        ("solver", lambda: bench_solver_vs_dense(100_000, 200, min_ratio=20, repeats=repeats)),
        ("solver", lambda: bench_solver(1_000_000, 50, limit_s=1.0, repeats=repeats)),
    ]
    for method in EVAL_METHODS[:-1]:
        steps.append(("evaluation", lambda m=method: bench_evaluation(m, n_eval, EVAL_MIN_RATIO[m], eval_repeats)))
    # ACE segments every image with SLIC and runs the model on every segment's patch: two orders of
    # magnitude below plain inference by design, so fewer images and repeats, and no target
    steps.append(("evaluation", lambda: bench_evaluation("ACE", ace_n, EVAL_MIN_RATIO["ACE"], ace_repeats,
                                                         ace_images=ace_images)))
    steps.append(("score-cam", lambda: bench_scorecam_batching(min_ratio=SCORECAM_MIN_RATIO, repeats=repeats)))
    steps.append(("memory", lambda: bench_ingest_memory(1_000 if quick else 2_000, factor=10)))
    steps.append(("demo", bench_demo))
    return [(g, fn) for g, fn in steps if g in only]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="repint bench", description=__doc__.splitlines()[0])
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``repint bench`` and ``python benchmarks/run.py``."""
    p.add_argument("--quick", action="store_true", help="smaller sizes and 3 repeats: a few minutes on 2 cores")
    p.add_argument("--only", type=lambda v: set(v.split(",")), metavar="GROUP[,GROUP]",
                   help=f"run only these groups: {', '.join(GROUPS)} (default: all but demo)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"folder for bench.json and bench.md (default {DEFAULT_OUT})")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when a target is not met")
    p.add_argument("--torch-threads", type=int, metavar="N",
                   help="torch.set_num_threads(N) in this process (default: torch's own, one per core)")
    p.add_argument("--ingest-child", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    """Run the plan, print the table, write ``bench.json`` and ``bench.md`` into ``args.out``."""
    if args.ingest_child:
        print(json.dumps(ingest_child(json.loads(args.ingest_child))))
        return 0
    if args.only and args.only - set(GROUPS):
        raise SystemExit(f"repint bench: unknown group(s) {', '.join(sorted(args.only - set(GROUPS)))}; "
                         f"choose from {', '.join(GROUPS)}")
    for k, v in CHILD_ENV.items():
        os.environ.setdefault(k, v)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    load_before, t0 = load_average(), time.perf_counter()
    results = []
    for group, step in plan(args.quick, args.only):
        t = time.perf_counter()
        r = step()
        r["group"], r["seconds"], r["load_average_after"] = group, round(time.perf_counter() - t, 1), load_average()
        results.append(r)
        ratio = "" if r["ratio"] is None else f" = {r['ratio']:.2f}"
        print(f"{r['stage']}: {r['measured']} vs {r['reference']}{ratio} ({r['seconds']:.0f} s, load "
              f"{r['load_average_after'][0]})", file=sys.stderr, flush=True)
    info = machine()
    load_after = load_average()
    met = sum(r["pass"] is True for r in results)
    judged = sum(r["pass"] is not None for r in results)
    foot = (f"{info['cpus']} CPUs, torch {info['torch']} ({info['torch_threads']} threads), "
            f"{'--quick, ' if args.quick else ''}{time.perf_counter() - t0:.0f} s; load average (1, 5, 15 min) "
            f"{load_before} before, {load_after} after; {met} of {judged} targets met.")
    md = table(results) + "\n\n" + foot + "\n"
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.md").write_text(md)
    (args.out / "bench.json").write_text(json.dumps(
        {"date": datetime.now(UTC).isoformat(timespec="seconds"),
         "options": {"quick": args.quick, "only": sorted(args.only) if args.only else None,
                     "torch_threads": args.torch_threads},
         "machine": {**info, "load_average_before": load_before, "load_average_after": load_after},
         "results": results}, indent=2, default=float) + "\n")
    print(f"written: {args.out / 'bench.json'}, {args.out / 'bench.md'}", file=sys.stderr)
    return 1 if args.strict and any(r["pass"] is False for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    return run(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
