"""The solver's measurements: one greedy solve at scale against its time limit, and against the
straightforward boolean-matrix greedy on the same input."""

from __future__ import annotations

import time

import numpy as np

from repint.app.bench.common import Result, med, result, rounded, timed


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

