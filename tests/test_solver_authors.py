"""The authors' solver (repint.solver.authors_polytope): Algorithm 1's greedy under their forgiving 1%
constraint, then backward elimination, on hand-computed sign matrices, plus properties on random ones.
Notation as in test_solver.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_solver import problems, signs_from_agree

from repint.solver import (
    AUTHORS_TOLERANCE,
    authors_polytope,
    forgiving_bound,
    get_solver,
    greedy_polytope,
    greedy_polytope_dense,
    solvers,
)

# --- The authors' solver (repint.solver.authors_polytope) -------------------------------------------
# Backward elimination, last pick first. 9 images, input 0, D = {4..8}; fewer than 100 same-class
# images, so the 1% tolerance allows 0 and the bound is tau = 0 (every D image is off some column).
#        h0 h1 h2 h3
# x  0:   1  1  1  1   (input)
# s1 1:   1  1  0  1   same
# s2 2:   1  1  1  0   same
# s3 3:   1  1  1  1   same
# d1 4:   0  0  1  1   D
# d2 5:   0  1  0  1   D
# d3 6:   1  0  1  0   D
# d4 7:   1  1  0  1   D
# d5 8:   1  1  1  0   D
# Greedy: step 1, |cur| 9, |cur ∩ D| 5: h0 removes {d1,d2} 2/2 = 1, h1 {d1,d3} 2/2 = 1, h2 {s1,d2,d4}
#   3/2, h3 {s2,d3,d5} 3/2 -> h0 (ties h1 on ratio and den: lowest index).
#   step 2, D left {d3,d4,d5}: h1 {d3} 1/1 = 1 <- chosen; h2 {s1,d4} 2; h3 {s2,d3,d5} 3/2.
#   step 3, D left {d4,d5}: h2 {s1,d4} 2/1, h3 {s2,d5} 2/1 -> h2 (lowest index). step 4: h3 {s2,d5}.
#   Greedy P = [0, 1, 2, 3], covered {x, s3}.
# Elimination, last first: h3 is the last pick (kept: without it d5 is covered).
#   h2: P = {0,1,3} covers {x, s1, s3, d4}: 1 > 0 -> kept.
#   h1: P = {0,2,3} covers {x, s3}: 0 <= 0 -> dropped.
#   h0: P = {2,3} covers {x, s3, d1}: 1 > 0 -> kept.
#   Result [0, 2, 3], covered {x, s3}. (First pick first would have dropped h0 and kept h1: [1, 2, 3].)
ELIM_AGREE = [[1, 1, 1, 1], [1, 1, 0, 1], [1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 1, 1], [0, 1, 0, 1], [1, 0, 1, 0],
              [1, 1, 0, 1], [1, 1, 1, 0]]
ELIM_OTHER = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1], dtype=bool)


def test_authors_backward_elimination_drops_a_redundant_boundary_last_pick_first():
    assert solvers() == ["greedy", "authors"] and get_solver("greedy") is greedy_polytope
    assert get_solver("authors") is authors_polytope
    signs = signs_from_agree(ELIM_AGREE, [True, False, False, True], 0)
    g = greedy_polytope(signs, 0, ELIM_OTHER)
    assert g.boundaries.tolist() == [0, 1, 2, 3]
    p = authors_polytope(signs, 0, ELIM_OTHER)
    assert p.boundaries.tolist() == [0, 2, 3]
    assert p.orientation.tolist() == [True, False, True]
    assert p.covered.tolist() == g.covered.tolist() == [True, False, False, True, False, False, False, False, False]
    assert (p.tau, p.delta, p.n_other_covered, p.n_covered, p.purity) == (0, 0, 0, 2, 1.0)
    with pytest.raises(ValueError, match="Unknown solver 'lazy'; available: greedy, authors"):
        get_solver("lazy")


def _tolerance_case(n_same: int, same_lost: bool) -> tuple[np.ndarray, np.ndarray]:
    """``n_same`` same-class images (the input first) on x's side of both boundaries, then D = {d1, d2}:
    h0 removes d1, h1 removes d2, and, with ``same_lost``, each also one same-class image (rows 1, 2)."""
    agree = np.ones((n_same + 2, 2), dtype=int)
    agree[n_same, 0] = agree[n_same + 1, 1] = 0
    if same_lost:
        agree[1, 0] = agree[2, 1] = 0
    other = np.zeros(n_same + 2, dtype=bool)
    other[n_same:] = True
    return signs_from_agree(agree.tolist(), [False, True], 0), other


def test_authors_tolerance_lets_the_greedy_stop_earlier():
    assert (AUTHORS_TOLERANCE.numerator, AUTHORS_TOLERANCE.denominator) == (1, 100)
    # 200 same-class images: bound max(0, floor(200 / 100)) = 2 >= |D| = 2 -> nothing to exclude.
    signs, other = _tolerance_case(200, same_lost=False)
    p = authors_polytope(signs, 0, other)
    assert p.boundaries.tolist() == [] and p.covered.all() and (p.delta, p.n_other_covered) == (2, 2)
    assert greedy_polytope(signs, 0, other).boundaries.tolist() == [0, 1]  # the paper's delta = tau = 0
    # 100 same-class images: bound floor(100 / 100) = 1 < 2. Step 1: h0, h1 both 1/1 -> h0; then
    # |P ∩ D| = 1 <= floor(100 / 100) = 1: stop with [0] (the greedy goes on to [0, 1]).
    signs, other = _tolerance_case(100, same_lost=False)
    p = authors_polytope(signs, 0, other)
    assert p.boundaries.tolist() == [0] and (p.delta, p.n_other_covered, p.n_covered) == (1, 1, 101)
    # 100 again, but each boundary also removes a same-class image (2/1 each): after h0 only 99
    # same-class images are covered, floor(99 / 100) = 0 < 1, so it goes on to [0, 1].
    signs, other = _tolerance_case(100, same_lost=True)
    p = authors_polytope(signs, 0, other)
    assert p.boundaries.tolist() == [0, 1] and (p.delta, p.n_other_covered, p.n_covered) == (0, 0, 98)
    # tau stays a floor of the bound; the floor of the share is exact at multiples of 100
    assert forgiving_bound(10, 3, tau=3) == 3 and forgiving_bound(300 + 2, 2, tau=0) == 3
    assert forgiving_bound(299 + 2, 2, tau=0) == 2


def authors_dense(signs: np.ndarray, i: int, other: np.ndarray) -> tuple[list[int], np.ndarray]:
    """The authors' solver spelled out on boolean matrices (the reference of the properties below)."""
    agree = signs == signs[i]
    tau = int((agree.all(axis=1) & other).sum())

    def ok(p: list[int]) -> bool:
        cov = agree[:, p].all(axis=1)
        return int((cov & other).sum()) <= max(tau, int((cov & ~other).sum()) // 100)

    path = greedy_polytope_dense(signs, i, other).boundaries.tolist()
    chosen = next(path[:k] for k in range(len(path) + 1) if ok(path[:k]))
    kept = list(chosen)
    for h in reversed(chosen):
        if ok([g for g in kept if g != h]):
            kept.remove(h)
    return kept, agree[:, kept].all(axis=1)


@st.composite
def tolerant_problems(draw):
    # enough same-class images (>= 100) for the tolerance to allow some other-class coverage; same-class
    # images mostly on x's side of every boundary, other-class ones on it at 60%: several greedy steps
    n, q = draw(st.integers(100, 300)), draw(st.integers(1, 16))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    i = draw(st.integers(0, n - 1))
    other = rng.random(n) < draw(st.sampled_from([0.02, 0.05, 0.2]))
    other[i] = False
    agree = rng.random((n, q)) < np.where(other, 0.6, draw(st.sampled_from([0.9, 0.97, 1.0])))[:, None]
    agree[i] = True
    row = rng.random(q) < 0.5
    return np.where(agree, row[None, :], ~row[None, :]), i, other


@settings(max_examples=60, deadline=None)
@given(st.one_of(problems(), tolerant_problems()))
def test_authors_properties(problem):
    signs, i, other = problem
    p = authors_polytope(signs, i, other)
    g = greedy_polytope(signs, i, other)
    agree = signs == signs[i]
    kept, covered = authors_dense(signs, i, other)
    assert p.boundaries.tolist() == kept and np.array_equal(p.covered, covered)
    # The constraint holds with the returned bound; tau as in the paper.
    assert p.tau == g.tau and p.n_other_covered == int((p.covered & other).sum())
    assert p.delta == forgiving_bound(p.n_covered, p.n_other_covered, p.tau) >= p.tau
    assert p.n_other_covered <= p.delta
    assert p.covered[i] and np.array_equal(p.covered, agree[:, p.boundaries].all(axis=1))
    assert np.array_equal(p.orientation, signs[i, p.boundaries])
    # A subsequence of the paper's greedy path, never longer.
    path = g.boundaries.tolist()
    pos = [path.index(h) for h in p.boundaries.tolist()]
    assert pos == sorted(pos) and len(pos) <= len(path)
