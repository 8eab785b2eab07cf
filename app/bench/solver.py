"""The solver's measurements: one greedy solve at scale against its time limit, against the
straightforward boolean-matrix greedy on the same input, and the interpret stage's solves (one task
per centre) on a local Dask cluster of 2 worker processes against 1."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from repint.app.bench.common import Result, alternating, load_average, med, result, rounded, timed


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



def solve_store(path: str, n: int, q: int, v: int, seed: int = 0) -> Any:
    """A store with what the interpret stage reads, from :func:`sign_problem`'s features, hyperplanes
    and classes: the packed sign bits of ``n`` reference images against ``q`` shared boundaries (a
    complete ``signs-reference`` stage), their predictions and ``v`` centres' inputs (distinct images).
    Returns the run spec ``prepare_polytopes`` and ``solve_centre`` take."""
    from repint.signs import pack_signs, sign_matrix
    from repint.storage import FeatureStore
    from repint.tasks.runspec import RunSpec

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 32), dtype=np.float32)
    w = rng.standard_normal((q, 32), dtype=np.float32)
    b = 0.5 * rng.standard_normal(q)
    pred = (x @ rng.standard_normal((32, 10), dtype=np.float32)).argmax(1).astype(np.int64)
    chunk = min(n, 65_536)
    store = FeatureStore(path)
    store.write("reference/predictions", pred, chunks=(chunk,))
    store.write("signs/reference", pack_signs(sign_matrix(x, w, b)), chunks=(chunk, -(-q // 8)))
    store.write("boundaries/owner", np.full(q, -1, dtype=np.int64))  # Q shared by every centre
    store.write("centres/input_index", np.sort(rng.choice(n, v, replace=False)).astype(np.int64))
    store.begin_stage("signs-reference", "synthetic", 1)
    store.mark_unit_done("signs-reference", 0)
    store.finish_stage("signs-reference")
    return RunSpec(store=path, out_dir=str(Path(path).parent), dataset="bench", reference={}, unseen={}, model={},
                   interpretation={}, evaluation={})


def solve_centre_fn(spec: Any, centre: int) -> dict:
    """``solve_centre``'s function (no Prefect task run): what a worker runs for one centre."""
    from repint.tasks.solve import solve_centre

    return solve_centre.fn(spec, centre)


def bench_solves_parallel(n: int, q: int, v: int, repeats: int, min_ratio: float = 1.5) -> Result:
    """The interpret stage's ``solve_centre`` over ``v`` centres (a store of :func:`solve_store`) on a
    local Dask cluster of 2 workers (127.0.0.1, processes, one thread each, as the pipeline's) against
    the same centres all sent to one of its workers (the other idles: one cluster, so its ~10 s of imports
    per worker are paid twice, not thrice); passes alternating after a warm-up pass on each, ratio of the
    median times. 2 threads against 1 in the same rounds, in the details: the solver holds the GIL.
    Identical polytopes asserted."""
    import logging

    from dask.distributed import Client, LocalCluster

    from repint.storage import FeatureStore
    from repint.tasks.solve import prepare_polytopes

    logging.getLogger("distributed").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="repint-bench-solves-") as tmp:
        spec = solve_store(str(Path(tmp, "store.zarr")), n, q, v)
        centres = prepare_polytopes.fn(spec)
        outputs: dict[str, list[tuple[list, np.ndarray]]] = {}
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as cluster, \
                Client(cluster) as client:
            client.wait_for_workers(2)
            first_worker = sorted(client.scheduler_info(n_workers=-1)["workers"])[0]

            def keep(name: str, out: list) -> None:
                outputs.setdefault(name, []).append((out, FeatureStore(spec.store).read("polytopes/boundaries")))

            def on(k: int) -> Callable[[], None]:
                def run() -> None:
                    futures = client.map(solve_centre_fn, [spec] * len(centres), centres, pure=False,
                                         workers=None if k > 1 else [first_worker])
                    keep(f"{k} worker{'s' * (k > 1)}", client.gather(futures))
                return run

            def threads(k: int) -> Callable[[], None]:
                def run() -> None:
                    with ThreadPoolExecutor(k) as pool:
                        keep(f"{k} thread{'s' * (k > 1)}", list(pool.map(solve_centre_fn, [spec] * len(centres),
                                                                          centres)))
                return run

            times = alternating({"1 worker": on(1), "2 workers": on(2), "1 thread": threads(1),
                                 "2 threads": threads(2)}, repeats)
    first, ref = outputs["1 worker"][0]
    if any(out != first or not np.array_equal(p, ref) for runs in outputs.values() for out, p in runs):
        raise AssertionError(f"The solves on 2 workers, 1 worker and threads disagree (N={n}, Q={q}, {v} centres).")
    one, two = med(times["1 worker"]), med(times["2 workers"])
    ratio = one / two
    return result(f"interpret stage: {v} solves (N={n:,}, |Q| = {q}) on a local Dask cluster, 2 workers vs 1, "
                  "identical polytopes asserted", ratio, f">= {min_ratio:g}x", ratio >= min_ratio,
                  f"{1e3 * two / v:,.0f} ms per centre (2 workers)", f"{1e3 * one / v:,.0f} ms per centre (1 worker)",
                  n=n, q=q, centres=v, times_s={k: rounded(t) for k, t in times.items()},
                  threads_2_vs_1=round(med(times["1 thread"]) / med(times["2 threads"]), 3),
                  polytope_sizes=[r["size"] for r in first], cpus=os.cpu_count(), load_average_after=load_average())
