"""Algorithm 1 (greedy polytope) on hand-computed sign matrices, plus properties on random ones.

Notation in the comments: ``A[i, h] = 1`` when image ``i`` is on the input's side of boundary ``h``
(``signs[i, h] == signs[input, h]``); ``cur`` is ``P ∩ R``; for a candidate ``h``
``num = |cur| - |cur ∩ A_h|`` (all images it removes) and ``den = |cur ∩ D| - |cur ∩ A_h ∩ D|``
(other-class images it removes). The greedy picks the smallest ``num / den`` among ``den > 0``,
then the largest ``den``, then the lowest index.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from repint.solver import InfeasibleError, greedy_polytope, greedy_polytope_dense

BOTH = pytest.mark.parametrize("solve", [greedy_polytope, greedy_polytope_dense], ids=["packed", "dense"])


def signs_from_agree(agree: list[list[int]], input_row: list[bool], input_index: int) -> np.ndarray:
    """A sign matrix whose row ``input_index`` is ``input_row`` and where image ``i`` is on the input's
    side of ``h`` exactly when ``agree[i][h]``. The input row's mixed signs make sure the solver
    compares with the input's side, not with ``True``."""
    a = np.asarray(agree, dtype=bool)
    assert a[input_index].all()
    row = np.asarray(input_row, dtype=bool)
    return np.where(a, row[None, :], ~row[None, :])


# --- Case 1: 8 images x 4 boundaries, input 0, a three-step path --------------------------------
#
#        h0 h1 h2 h3   class
# img0:   1  1  1  1   same (input)
# img1:   1  1  1  1   same
# img2:   0  1  1  0   same
# img3:   1  1  1  1   same
# img4:   0  1  1  1   D
# img5:   0  0  1  1   D
# img6:   1  1  1  0   D
# img7:   1  1  1  0   D
#
# tau: no D image has A = 1 on every column (img4: h0, img5: h0/h1, img6/img7: h3) -> tau = 0 = delta.
# h2 agrees with every image: num = den = 0 at every step, a trap a "num / max(den, 1)" rule would
# pick first (ratio 0). It must never be chosen.
#
# Step 1: cur = {0..7}, |cur| = 8, |cur ∩ D| = 4
#   h0: keeps {0,1,3,6,7}        num 8-5 = 3, den 4-2 = 2  -> 1.5
#   h1: keeps {0,1,2,3,4,6,7}    num 8-7 = 1, den 4-3 = 1  -> 1.0   <- chosen
#   h2: keeps all                num 0,       den 0        -> not eligible
#   h3: keeps {0,1,3,4,5}        num 8-5 = 3, den 4-2 = 2  -> 1.5
# Step 2: cur = {0,1,2,3,4,6,7}, |cur| = 7, |cur ∩ D| = 3
#   h0: keeps {0,1,3,6,7}        num 2, den 3-2 = 1 -> 2.0
#   h3: keeps {0,1,3,4}          num 3, den 3-1 = 2 -> 1.5          <- chosen
# Step 3: cur = {0,1,3,4}, |cur| = 4, |cur ∩ D| = 1
#   h0: keeps {0,1,3}            num 1, den 1 -> 1.0                <- chosen (only eligible one)
# Stop: cur = {0,1,3}, |cur ∩ D| = 0 <= delta = 0.
# Result: boundaries [1, 3, 0]; covered {0,1,3}; n_covered 3; purity 3/3 = 1.
CASE1_AGREE = [
    [1, 1, 1, 1],
    [1, 1, 1, 1],
    [0, 1, 1, 0],
    [1, 1, 1, 1],
    [0, 1, 1, 1],
    [0, 0, 1, 1],
    [1, 1, 1, 0],
    [1, 1, 1, 0],
]
CASE1_INPUT_ROW = [True, False, True, False]
CASE1_OTHER = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=bool)


@BOTH
def test_hand_computed_three_step_path(solve):
    signs = signs_from_agree(CASE1_AGREE, CASE1_INPUT_ROW, 0)
    p = solve(signs, 0, CASE1_OTHER)
    assert p.boundaries.tolist() == [1, 3, 0]
    assert p.covered.tolist() == [True, True, False, True, False, False, False, False]
    assert p.tau == 0
    assert p.delta == 0
    assert p.n_other_covered == 0
    assert p.n_covered == 3
    assert p.purity == 1.0
    # Orientation = the input's own signs at h1, h3, h0 = False, False, True.
    assert p.orientation.tolist() == [False, False, True]
    assert 2 not in p.boundaries.tolist()  # the zero-denominator boundary
    assert p.input_index == 0


@BOTH
def test_delta_above_tau_stops_early(solve):
    # Case 1 with delta = 1: after step 2 |cur ∩ D| = 1 <= 1, so it stops at [1, 3] with
    # cur = {0,1,3,4}: n_covered 4, one of them (img4) of another class: purity 3/4.
    signs = signs_from_agree(CASE1_AGREE, CASE1_INPUT_ROW, 0)
    p = solve(signs, 0, CASE1_OTHER, delta=1)
    assert p.boundaries.tolist() == [1, 3]
    assert p.covered.tolist() == [True, True, False, True, True, False, False, False]
    assert (p.tau, p.delta, p.n_other_covered, p.n_covered) == (0, 1, 1, 4)
    assert p.purity == 0.75
    # delta = 4 = |D|: nothing to exclude, no boundary, everything covered, purity 4/8.
    p = solve(signs, 0, CASE1_OTHER, delta=4)
    assert p.boundaries.tolist() == []
    assert p.orientation.tolist() == []
    assert p.covered.all()
    assert p.purity == 0.5


# --- Ties ------------------------------------------------------------------------------------------
# Equal ratio, different denominators. 6 images, input 0, D = {3, 4, 5}:
#        h0 h1 h2
# img0:   1  1  1  (input)
# img1:   1  1  0  same
# img2:   1  1  1  same
# img3:   0  1  0  D
# img4:   1  0  1  D
# img5:   1  0  1  D
# tau = 0 (img3 off h0, img4/img5 off h1).
# Step 1: cur = all 6, |cur ∩ D| = 3
#   h0: removes {3}      num 1, den 1 -> 1.0
#   h1: removes {4,5}    num 2, den 2 -> 1.0   <- same ratio, larger den wins over the lower index
#   h2: removes {1,3}    num 2, den 1 -> 2.0
# Step 2: cur = {0,1,2,3}, |cur ∩ D| = 1
#   h0: removes {3}      num 1, den 1 -> 1.0   <- chosen
#   h2: removes {1,3}    num 2, den 1 -> 2.0
# Result [1, 0], covered {0,1,2}.
TIE_DEN_AGREE = [[1, 1, 1], [1, 1, 0], [1, 1, 1], [0, 1, 0], [1, 0, 1], [1, 0, 1]]


@BOTH
def test_tie_on_ratio_prefers_larger_denominator(solve):
    signs = signs_from_agree(TIE_DEN_AGREE, [False, True, True], 0)
    other = np.array([0, 0, 0, 1, 1, 1], dtype=bool)
    p = solve(signs, 0, other)
    assert p.boundaries.tolist() == [1, 0]
    assert p.covered.tolist() == [True, True, True, False, False, False]


# Equal ratio and denominator -> lowest index. Input at row 2 (not 0), D = {0, 3}:
#        h0 h1 h2 h3
# img0:   1  1  0  1   D
# img1:   0  1  1  1   same
# img2:   1  1  1  1   same (input)
# img3:   1  0  1  0   D
# tau = 0.
# Step 1: cur = all 4, |cur ∩ D| = 2
#   h0: removes {1}      num 1, den 0 -> not eligible
#   h1: removes {3}      num 1, den 1 -> 1.0   <- ties with h2 and h3 on ratio and den: lowest index
#   h2: removes {0}      num 1, den 1 -> 1.0
#   h3: removes {3}      num 1, den 1 -> 1.0
# Step 2: cur = {0,1,2}, |cur ∩ D| = 1
#   h0: removes {1}      num 1, den 0 -> not eligible
#   h2: removes {0}      num 1, den 1 -> 1.0   <- chosen
#   h3: removes nothing  den 0 -> not eligible
# Result [1, 2], covered {1, 2}.
TIE_IDX_AGREE = [[1, 1, 0, 1], [0, 1, 1, 1], [1, 1, 1, 1], [1, 0, 1, 0]]


@BOTH
def test_tie_on_ratio_and_denominator_prefers_lowest_index(solve):
    signs = signs_from_agree(TIE_IDX_AGREE, [True, True, False, False], 2)
    other = np.array([1, 0, 0, 1], dtype=bool)
    p = solve(signs, 2, other)
    assert p.boundaries.tolist() == [1, 2]
    assert p.covered.tolist() == [False, True, True, False]
    assert p.orientation.tolist() == [True, False]
    assert p.input_index == 2


# --- Zero denominators -----------------------------------------------------------------------------
# 5 images, input 0, D = {3, 4}.
#        h0 h1 h2 h3
# img0:   1  1  1  1  (input)
# img1:   1  0  1  1  same
# img2:   1  1  0  1  same
# img3:   0  1  1  1  D
# img4:   1  1  1  0  D
# h1 and h2 remove only same-class images (den 0 always); a rule using num / max(den, 1) would give
# them ratio 1, the same as h0/h3, and then prefer them by index. They must never be chosen.
# Step 1: cur all 5, |cur ∩ D| = 2
#   h0: removes {3}  num 1, den 1 -> 1.0   <- chosen (ties h3, lower index)
#   h1: removes {1}  den 0 -> not eligible
#   h2: removes {2}  den 0 -> not eligible
#   h3: removes {4}  num 1, den 1 -> 1.0
# Step 2: cur = {0,1,2,4}: h3 removes {4} -> 1.0 <- chosen. Result [0, 3], covered {0,1,2}.
ZERO_DEN_AGREE = [[1, 1, 1, 1], [1, 0, 1, 1], [1, 1, 0, 1], [0, 1, 1, 1], [1, 1, 1, 0]]


@BOTH
def test_zero_denominator_boundary_never_chosen(solve):
    signs = signs_from_agree(ZERO_DEN_AGREE, [True, True, True, True], 0)
    other = np.array([0, 0, 0, 1, 1], dtype=bool)
    p = solve(signs, 0, other)
    assert p.boundaries.tolist() == [0, 3]
    assert p.covered.tolist() == [True, True, True, False, False]
    assert p.purity == 1.0


# --- tau > 0 ---------------------------------------------------------------------------------------
# 5 images, input 0, D = {2, 3, 4}; img2 is on the input's side of every boundary -> tau = 1.
#        h0 h1
# img0:   1  1  (input)
# img1:   1  0  same
# img2:   1  1  D      (inside every boundary)
# img3:   0  1  D
# img4:   1  0  D
# Step 1: cur all 5, |cur ∩ D| = 3 > delta = 1
#   h0: removes {3}    num 1, den 1 -> 1.0  <- chosen
#   h1: removes {1,4}  num 2, den 1 -> 2.0
# Step 2: cur = {0,1,2,4}, |cur ∩ D| = 2 > 1
#   h1: removes {1,4}  num 2, den 1 -> 2.0  <- chosen
# Stop: cur = {0, 2}, |cur ∩ D| = 1 = delta. purity (2 - 1) / 2 = 0.5.
TAU_AGREE = [[1, 1], [1, 0], [1, 1], [0, 1], [1, 0]]
TAU_OTHER = np.array([0, 0, 1, 1, 1], dtype=bool)


@BOTH
def test_tau_positive(solve):
    signs = signs_from_agree(TAU_AGREE, [False, True], 0)
    p = solve(signs, 0, TAU_OTHER)
    assert p.tau == 1
    assert p.delta == 1
    assert p.boundaries.tolist() == [0, 1]
    assert p.covered.tolist() == [True, False, True, False, False]
    assert p.n_other_covered == 1
    assert p.n_covered == 2
    assert p.purity == 0.5


@BOTH
def test_delta_below_tau_is_infeasible(solve):
    signs = signs_from_agree(TAU_AGREE, [False, True], 0)
    with pytest.raises(InfeasibleError, match="tau = 1"):
        solve(signs, 0, TAU_OTHER, delta=0)
    # InfeasibleError is a ValueError, so callers catching ValueError still see it.
    assert issubclass(InfeasibleError, ValueError)


@BOTH
def test_no_boundaries(solve):
    # Q empty: tau = |D| = 2 (every image trivially on the input's side), nothing chosen.
    signs = np.zeros((4, 0), dtype=bool)
    other = np.array([0, 1, 0, 1], dtype=bool)
    p = solve(signs, 0, other)
    assert (p.tau, p.n_covered, p.n_other_covered) == (2, 4, 2)
    assert p.boundaries.tolist() == []


# --- Validation ------------------------------------------------------------------------------------
@BOTH
def test_validation_errors(solve):
    signs = np.zeros((3, 2), dtype=bool)
    other = np.array([False, True, False])
    with pytest.raises(ValueError, match="boolean N x Q"):
        solve(signs.astype(np.int8), 0, other)
    with pytest.raises(ValueError, match="boolean N x Q"):
        solve(np.zeros(3, dtype=bool), 0, other)
    with pytest.raises(ValueError, match="length N = 3"):
        solve(signs, 0, np.array([False, True]))
    with pytest.raises(ValueError, match="length N = 3"):
        solve(signs, 0, np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="another class than itself"):
        solve(signs, 1, other)
    with pytest.raises(ValueError, match="outside"):
        solve(signs, 3, other)
    with pytest.raises(ValueError, match="outside"):
        solve(signs, -1, other)


# --- Properties on random small matrices ------------------------------------------------------------
@st.composite
def problems(draw):
    # n up to 150 so that the packed solver crosses 64-bit word boundaries.
    n = draw(st.integers(1, 150))
    q = draw(st.integers(0, 8))
    signs = draw(arrays(bool, (n, q)))
    other = draw(arrays(bool, (n,)))
    i = draw(st.integers(0, n - 1))
    other[i] = False
    return signs, i, other


@settings(max_examples=150, deadline=None)
@given(problems())
def test_properties(problem):
    signs, i, other = problem
    p = greedy_polytope(signs, i, other)
    agree = signs == signs[i]

    # tau by definition, delta defaults to it.
    assert p.tau == int((agree.all(axis=1) & other).sum())
    assert p.delta == p.tau
    # Covers the input; covers exactly the images on the input's side of every chosen boundary.
    assert p.covered[i]
    assert np.array_equal(p.covered, agree[:, p.boundaries].all(axis=1))
    assert int((p.covered & other).sum()) == p.n_other_covered <= p.delta
    # Distinct boundaries, orientation = the input's signs.
    assert len(set(p.boundaries.tolist())) == len(p.boundaries) <= signs.shape[1]
    assert np.array_equal(p.orientation, signs[i, p.boundaries])
    # Recompute along the path: every pick removed at least one other-class image, it was the
    # best eligible candidate by (ratio, -den, index), and the loop ran exactly while |P ∩ D| > delta.
    cur = np.ones(len(signs), dtype=bool)
    for step, h in enumerate(p.boundaries.tolist()):
        assert int((cur & other).sum()) > p.delta
        keys = {}
        for c in range(signs.shape[1]):
            if c in p.boundaries[:step]:
                continue
            new = cur & agree[:, c]
            den = int((cur & other).sum() - (new & other).sum())
            if den > 0:
                keys[c] = ((int(cur.sum()) - int(new.sum())) / den, -den, c)
        assert h in keys, f"step {step} picked boundary {h} whose denominator was 0"
        assert keys[h] == min(keys.values())
        cur &= agree[:, h]
    assert int((cur & other).sum()) <= p.delta
    # Counts.
    assert p.n_covered == int(p.covered.sum())
    assert p.purity == pytest.approx((p.n_covered - p.n_other_covered) / p.n_covered)
    # Deterministic and identical to the dense reference.
    again = greedy_polytope(signs, i, other)
    dense = greedy_polytope_dense(signs, i, other)
    for other_p in (again, dense):
        assert np.array_equal(p.boundaries, other_p.boundaries)
        assert np.array_equal(p.covered, other_p.covered)
        assert np.array_equal(p.orientation, other_p.orientation)
        assert (p.tau, p.delta, p.n_other_covered) == (other_p.tau, other_p.delta, other_p.n_other_covered)


@settings(max_examples=60, deadline=None)
@given(problems(), st.integers(0, 5))
def test_properties_with_larger_delta(problem, extra):
    signs, i, other = problem
    p0 = greedy_polytope(signs, i, other)
    p = greedy_polytope(signs, i, other, delta=p0.tau + extra)
    d = greedy_polytope_dense(signs, i, other, delta=p0.tau + extra)
    assert p.n_other_covered <= p0.tau + extra
    # A larger delta stops the same greedy path earlier: its boundaries are a prefix of delta = tau's.
    assert p.boundaries.tolist() == p0.boundaries[: len(p.boundaries)].tolist()
    assert np.array_equal(p.boundaries, d.boundaries)
    assert np.array_equal(p.covered, d.covered)
