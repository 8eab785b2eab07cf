"""Assigning unseen images to interpretations (repint.assignment), by hand and by properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from repint.assignment import assign, fallback_centres, fallbacks, polytope_cover, polytope_violations
from repint.centres import assign_nearest, squared_distances

# Features in 1-D: centres c0 = 0, c1 = 4, c2 = 10 of predicted classes 0, 1, 0; three boundaries.
# P0 = {h0 on side True}, P1 = {h1 on False, h2 on True}, P2 = {} (covers every image of class 0).
CENTRES = np.array([[0.0], [4.0], [10.0]], np.float32)
CENTRE_CLASS = np.array([0, 1, 0])
IDS = np.array([[0, -1], [1, 2], [-1, -1]])
ORIENT = np.array([[True, False], [False, True], [False, False]])
# image  ψ  class  signs h0 h1 h2   d to c0, c1, c2   nearest   cover (P0, P1, P2)   RI
# e0     1    0          T  F  F      1,  9, 81          0        T  F  T            0 (nearer of 0, 2)
# e1     3    0          F  F  T      9,  1, 49          1        F  F  T            2 (only P2; farther than c1)
# e2     3    1          F  F  T      9,  1, 49          1        F  T  F            1
# e3     9    1          T  T  T     81, 25,  1          2        F  F  F            2 (fallback: nearest)
# e4     2    0          T  F  F      4,  4, 64          0 (tie)  T  F  T            0
# e5     5    0          T  F  F     25,  1, 25          1        T  F  T            0 (tie of c0, c2: lowest)
FEATS = np.array([[1.0], [3.0], [3.0], [9.0], [2.0], [5.0]], np.float32)
PREDS = np.array([0, 0, 1, 1, 0, 0])
SIGNS = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 1], [1, 1, 1], [1, 0, 0], [1, 0, 0]], bool)


def test_assign_by_hand():
    a = assign(FEATS, CENTRES, SIGNS, IDS, ORIENT, PREDS, CENTRE_CLASS)
    assert a.nearest.tolist() == [0, 1, 1, 2, 0, 1]
    assert a.ri_centre.tolist() == [0, 2, 1, 2, 0, 0]
    assert a.ri_covered.tolist() == [True, True, True, False, True, True]
    np.testing.assert_array_equal(a.cover, [[1, 0, 1], [0, 0, 1], [0, 1, 0], [0, 0, 0], [1, 0, 1], [1, 0, 1]])


def test_polytope_cover_is_geometric_only():
    # without the class condition e2 and e3 are in P2 too, and e1 in P1 (h1 = F, h2 = T)
    np.testing.assert_array_equal(polytope_cover(SIGNS, IDS, ORIENT),
                                  [[1, 0, 1], [0, 1, 1], [0, 1, 1], [1, 0, 1], [1, 0, 1], [1, 0, 1]])


def test_assign_flattens_feature_maps():
    a = assign(FEATS.reshape(6, 1, 1, 1), CENTRES.reshape(3, 1, 1, 1), SIGNS, IDS, ORIENT, PREDS, CENTRE_CLASS)
    assert a.ri_centre.tolist() == [0, 2, 1, 2, 0, 0]


def test_assign_rejects_rows_that_do_not_line_up():
    with pytest.raises(ValueError, match="one row per unseen image"):
        assign(FEATS, CENTRES, SIGNS[:5], IDS, ORIENT, PREDS, CENTRE_CLASS)
    with pytest.raises(ValueError, match="one row per centre"):
        assign(FEATS, CENTRES, SIGNS, IDS, ORIENT, PREDS, CENTRE_CLASS[:2])
    with pytest.raises(ValueError, match="same V x K shape"):
        polytope_cover(SIGNS, IDS, ORIENT[:, :1])


@st.composite
def problems(draw: st.DrawFn) -> tuple[np.ndarray, ...]:
    n, v, m, k, d = (draw(st.integers(1, hi)) for hi in (12, 5, 6, 4, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    feats = rng.integers(-3, 4, (n, d)).astype(np.float32)  # small integers: ties are common
    centres = rng.integers(-3, 4, (v, d)).astype(np.float32)
    signs = rng.random((n, m)) < 0.5
    ids = np.where(rng.random((v, k)) < 0.3, -1, rng.integers(0, m, (v, k)))
    orient = rng.random((v, k)) < 0.5
    return feats, centres, signs, ids, orient, rng.integers(0, 2, n), rng.integers(0, 2, v)


@settings(max_examples=100, deadline=None)
@given(problems())
def test_assign_properties(p):
    feats, centres, signs, ids, orient, preds, cls = p
    a = assign(*p)
    dist = squared_distances(feats, centres)
    np.testing.assert_array_equal(a.nearest, assign_nearest(feats, centres))
    np.testing.assert_array_equal(a.ri_covered, a.cover.any(1))
    assert not (a.cover & (preds[:, None] != cls[None, :])).any()  # a polytope covers its own class only
    np.testing.assert_array_equal(a.cover, polytope_cover(signs, ids, orient) & (preds[:, None] == cls))
    rows = np.arange(len(feats))
    np.testing.assert_array_equal(a.ri_centre[~a.ri_covered], a.nearest[~a.ri_covered])  # the fallback
    c = a.ri_covered
    assert a.cover[rows[c], a.ri_centre[c]].all()
    best = np.where(a.cover, dist, np.inf).min(1)
    np.testing.assert_array_equal(dist[rows[c], a.ri_centre[c]], best[c])  # nearest among the covering ones
    for i in rows[c]:  # ties: the lowest covering centre at that distance
        assert a.ri_centre[i] == np.flatnonzero(a.cover[i] & (dist[i] == best[i]))[0]


@settings(max_examples=50, deadline=None)
@given(problems(), st.randoms(use_true_random=False))
def test_assign_is_per_image(p, rnd):
    feats, centres, signs, ids, orient, preds, cls = p
    perm = np.array(rnd.sample(range(len(feats)), len(feats)))
    a = assign(*p)
    b = assign(feats[perm], centres, signs[perm], ids, orient, preds[perm], cls)
    np.testing.assert_array_equal(b.ri_centre, a.ri_centre[perm])
    np.testing.assert_array_equal(b.cover, a.cover[perm])


def test_empty_polytopes_cover_their_class():
    a = assign(FEATS, CENTRES, SIGNS, np.full((3, 2), -1), ORIENT, PREDS, CENTRE_CLASS)
    np.testing.assert_array_equal(a.cover, PREDS[:, None] == CENTRE_CLASS[None, :])
    # class 1 images have only c1; class 0 the nearer of c0 and c2
    assert a.ri_centre.tolist() == [0, 0, 1, 1, 0, 0]


def test_fallback_rules_are_registered_and_nearest_same_class_keeps_the_class():
    from repint.assignment import assign, fallbacks
    from repint.config import EvaluationConfig

    assert fallbacks() == ["nearest", "nearest-same-class", "least-violated"]
    assert EvaluationConfig().fallback == "nearest"
    # centres at 0 (class 0), 10 (class 1), 4 (class 1); images at 1 (class 1), 9 (class 0), 5 (class 2)
    centres = np.array([[0.0], [10.0], [4.0]])
    feats = np.array([[1.0], [9.0], [5.0]])
    preds, centre_class = np.array([1, 0, 2]), np.array([0, 1, 1])
    signs = np.zeros((3, 1), dtype=bool)
    ids, orient = np.array([[0], [0], [0]]), np.array([[True], [True], [True]])  # no polytope covers anything
    near = assign(feats, centres, signs, ids, orient, preds, centre_class)
    same = assign(feats, centres, signs, ids, orient, preds, centre_class, fallback="nearest-same-class")
    np.testing.assert_array_equal(near.ri_centre, [0, 1, 2])  # nearest centre, whatever its class
    np.testing.assert_array_equal(same.ri_centre, [2, 0, 2])  # nearest of the image's class; class 2: nearest
    assert not same.ri_covered.any()
    with pytest.raises(ValueError, match="Unknown fallback rule 'far'; available: nearest, nearest-same-class"):
        assign(feats, centres, signs, ids, orient, preds, centre_class, fallback="far")


# least-violated: 1-D centres c0 = 0, c1 = 2, c2 = 5 (class 0) and c3 = 8 (class 1); four boundaries.
# P0 = {h0 T, h1 T, h2 T}, P1 = {h0 F, h3 T}, P2 = {h1 F, h2 T}, P3 = {h2 F}.
LV_CENTRES = np.array([[0.0], [2.0], [5.0], [8.0]])
LV_CLASS = np.array([0, 0, 0, 1])
LV_IDS = np.array([[0, 1, 2], [0, 3, -1], [1, 2, -1], [2, -1, -1]])
LV_ORIENT = np.array([[1, 1, 1], [0, 1, 0], [0, 1, 0], [0, 0, 0]], bool)
# image ψ   class  h0 h1 h2 h3   violations P0..P3   d to c0..c3        nearest  least-violated
# e0    1    0      F  F  F  F    3  1  1  0          1   1  16  49      0 (tie)  1 (c1, c2 tie on 1: c1 nearer)
# e1    6    0      T  T  F  T    1  1  2  0          36  16  1   4      2        1 (c0, c1 on 1: c1 nearer)
# e2    4.5  2      F  F  F  F    3  1  1  0          .. c2 nearest      2        2 (no centre of class 2)
# e3    0    1      T  T  T  F    0  2  1  1          0   4  25  64      0        3 (P0's 0 is of class 0)
# e4    7    1      F  F  F  F    3  1  1  0          49  25  4   1      3        3 (covered by P3)
# e5    1    0      F  T  T  F    1  1  1  1          1   1  16  49      0        0 (1, 1, 1; c0, c1 tie: lowest)
LV_FEATS = np.array([[1.0], [6.0], [4.5], [0.0], [7.0], [1.0]])
LV_PREDS = np.array([0, 0, 2, 1, 1, 0])
LV_SIGNS = np.array([[0, 0, 0, 0], [1, 1, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0], [0, 1, 1, 0]], bool)
LV_VIOLATIONS = [[3, 1, 1, 0], [1, 1, 2, 0], [3, 1, 1, 0], [0, 2, 1, 1], [3, 1, 1, 0], [1, 1, 1, 1]]


def test_least_violated_by_hand():
    viol = polytope_violations(LV_SIGNS, LV_IDS, LV_ORIENT)
    np.testing.assert_array_equal(viol, LV_VIOLATIONS)
    np.testing.assert_array_equal(polytope_cover(LV_SIGNS, LV_IDS, LV_ORIENT), viol == 0)
    args = (LV_FEATS, LV_CENTRES, LV_SIGNS, LV_IDS, LV_ORIENT, LV_PREDS, LV_CLASS)
    near, least = assign(*args), assign(*args, fallback="least-violated")
    assert near.ri_centre.tolist() == [0, 2, 2, 0, 3, 0]
    assert least.ri_centre.tolist() == [1, 1, 2, 3, 3, 0]
    assert least.ri_covered.tolist() == near.ri_covered.tolist() == [False, False, False, False, True, False]
    dist = squared_distances(LV_FEATS, LV_CENTRES)
    np.testing.assert_array_equal(fallback_centres(dist, LV_PREDS, LV_CLASS, viol, "least-violated"),
                                  [1, 1, 2, 3, 3, 0])  # the rule on every image, covered or not
    np.testing.assert_array_equal(fallback_centres(dist, LV_PREDS, LV_CLASS, viol, "nearest"), [0, 2, 2, 0, 3, 0])


@settings(max_examples=100, deadline=None)
@given(problems())
def test_least_violated_properties(p):
    feats, centres, signs, ids, orient, preds, cls = p
    a = assign(*p, fallback="least-violated")
    near = assign(*p)
    np.testing.assert_array_equal(a.cover, near.cover)
    np.testing.assert_array_equal(a.ri_centre[a.ri_covered], near.ri_centre[a.ri_covered])  # only the fallback
    viol = polytope_violations(signs, ids, orient)
    dist = squared_distances(feats, centres)
    for i in np.flatnonzero(~a.ri_covered):
        same = np.flatnonzero(cls == preds[i])
        if not len(same):
            assert a.ri_centre[i] == near.nearest[i]
            continue
        assert a.ri_centre[i] == min(same, key=lambda v: (viol[i, v], dist[i, v], v))
        assert viol[i, a.ri_centre[i]] >= 1  # uncovered: every polytope of its class is violated


def test_assign_gives_every_rules_fallback():
    """``fallback_centre`` holds each registered rule's centre; ``ri_centre`` takes the configured
    rule's column where no polytope covers the image, and the covering polytope's where one does."""
    rng = np.random.default_rng(5)
    feats, centres = rng.standard_normal((40, 6)), rng.standard_normal((5, 6))
    signs = rng.random((40, 7)) < 0.5
    ids = np.array([[0, 1, -1], [2, -1, -1], [3, 4, 5], [6, -1, -1], [0, 2, 4]])
    orient = rng.random(ids.shape) < 0.5
    preds, centre_class = rng.integers(0, 3, 40), np.array([0, 1, 2, 0, 1])
    for rule in fallbacks():
        a = assign(feats, centres, signs, ids, orient, preds, centre_class, fallback=rule)
        assert a.fallback_centre.shape == (40, len(fallbacks()))
        col = a.fallback_centre[:, fallbacks().index(rule)]
        np.testing.assert_array_equal(a.ri_centre[~a.ri_covered], col[~a.ri_covered])
        assert a.cover[np.arange(40), a.ri_centre][a.ri_covered].all()
