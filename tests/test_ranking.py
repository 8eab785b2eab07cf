"""Eq. 6 semantic distance and the similarity ranking, by hand."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from repint.ranking import (
    covered_neighbours,
    euclidean_neighbours,
    most_representative,
    rank_similar,
    semantic_distance,
)

# Boundaries W0 = (3, 4) (norm 5), W1 = (0, 2) (norm 2); ψ(x) = (1, 1): <W0, ψ(x)> = 7, <W1, ψ(x)> = 2.
W = np.array([[3.0, 4.0], [0.0, 2.0]])
PSI_X = np.array([1.0, 1.0])
# others:        <W0,.>  <W1,.>   raw Dist             unit Dist
# c = (1, 0)       3       0      |3-7| + |0-2| = 6     4/5 + 2/2 = 1.8
# b = (2, 1)      10       2      |10-7| + 0   = 3      3/5 + 0   = 0.6
# a = (1, 1)       7       2      0                     0
# d = (0, 1.5)     6       3      1 + 1        = 2      1/5 + 1/2 = 0.7
OTHERS = np.array([[1.0, 0.0], [2.0, 1.0], [1.0, 1.0], [0.0, 1.5]])


def test_semantic_distance_unit_normals():
    np.testing.assert_allclose(semantic_distance(W, PSI_X, OTHERS), [1.8, 0.6, 0.0, 0.7], atol=1e-12)


def test_semantic_distance_raw_w():
    np.testing.assert_allclose(semantic_distance(W, PSI_X, OTHERS, unit=False), [6.0, 3.0, 0.0, 2.0], atol=1e-12)


def test_rank_similar_orders_differ_between_variants():
    # unit: a (0) < b (0.6) < d (0.7) < c (1.8)  -> positions [2, 1, 3, 0]
    # raw:  a (0) < d (2)   < b (3)   < c (6)    -> positions [2, 3, 1, 0]
    assert rank_similar(W, PSI_X, OTHERS).tolist() == [2, 1, 3, 0]
    assert rank_similar(W, PSI_X, OTHERS, unit=False).tolist() == [2, 3, 1, 0]


def test_rank_similar_ties_are_stable_and_feature_maps_flatten():
    # Two copies of b at positions 0 and 2: equal distances keep their order. Features as [n, 1, 2].
    others = np.array([[2.0, 1.0], [1.0, 1.0], [2.0, 1.0]]).reshape(3, 1, 2)
    assert rank_similar(W.reshape(2, 1, 2), PSI_X.reshape(1, 2), others).tolist() == [1, 0, 2]


def test_zero_boundary_contributes_nothing():
    w = np.vstack([W, np.zeros((1, 2))])
    np.testing.assert_allclose(semantic_distance(w, PSI_X, OTHERS), [1.8, 0.6, 0.0, 0.7], atol=1e-12)


def test_euclidean_neighbours_by_hand():
    # squared distances from image 2 at (0, 0): 25, 1, 0 (itself, excluded), 16, 4, 9, 1
    pts = np.array([[5, 0], [1, 0], [0, 0], [0, 4], [2, 0], [0, 3], [0, 1]], dtype=np.float32)
    for block in (1, 3, 7, 1024):  # read in blocks or at once: the same answer
        assert euclidean_neighbours(pts, 2, top=4, block=block).tolist() == [1, 6, 4, 5]  # tie 1, 6: lowest first
    assert euclidean_neighbours(pts.reshape(7, 1, 2, 1), 2, top=6).tolist() == [1, 6, 4, 5, 3, 0]
    assert euclidean_neighbours(pts, 0, top=2).tolist() == [4, 1]  # from (5, 0): 9, 16, ...


def test_most_representative_by_hand():
    assert most_representative(np.array([3, 7, 7, 0, 5]), 3) == [1, 2, 4]  # ties: lowest id first
    assert most_representative(np.array([3, 7]), 5) == [1, 0]
    assert all(isinstance(c, int) for c in most_representative(np.array([1, 2]), 2))


def test_covered_neighbours_by_hand():
    # OTHERS as rows 1, 2, 4, 6 of 7 (rows 0, 3, 5 uncovered and far off); unit: a (row 4), b (2), d (6), c (1)
    feats = np.full((7, 2), 50.0)
    feats[[1, 2, 4, 6]] = OTHERS
    covered, bank = np.array([1, 2, 4, 6]), np.vstack([np.ones((1, 2)), W])  # W is rows 1, 2 of the bank
    for block in (1, 2, 3, 7, 100):
        assert [r.tolist() for r in covered_neighbours(feats, bank, [([1, 2], PSI_X, covered)], 3, block=block)] \
            == [[4, 2, 6]]
        queries = [([1, 2], PSI_X, covered), ([], PSI_X, covered), ([1, 2], PSI_X, covered[:0]),
                   ([1, 2], feats[1], covered[covered != 1])]
        raw = covered_neighbours(feats, bank, queries, 4, unit=False, block=block)
        # raw: a (4), d (6), b (2), c (1); no boundaries: the cover in order; an empty cover: nothing;
        # from c = (1, 0) over the same polytope (projections shared): (3, 0) -> b 7 + 2, a 4 + 2, d 3 + 3: a and d
        # tie at 6, the lower row first
        assert [r.tolist() for r in raw] == [[4, 6, 2, 1], [1, 2, 4, 6], [], [4, 6, 2]]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_covered_neighbours_equals_ranking_the_whole_cover_in_memory(data):
    """Block by block, each block once for all queries, queries of one polytope sharing their projections,
    equals ``rank_similar`` on the whole cover at once. Raw normals on integer features and boundaries are
    exact in float64 (ties everywhere: they go to the lowest row); unit normals on continuous features,
    whose distances are rounded differently by products of other shapes, differ by more than rounding."""
    n, d = data.draw(st.integers(1, 40)), data.draw(st.integers(1, 5))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    unit, top, block = data.draw(st.booleans()), data.draw(st.integers(0, 8)), data.draw(st.integers(1, 50))
    feats = rng.random((n, d)).astype(np.float32) if unit else rng.integers(0, 3, size=(n, d)).astype(np.float32)
    bank = rng.normal(size=(6, d)) if unit else rng.integers(-2, 3, size=(6, d)).astype(np.float64)
    polytopes = [rng.choice(6, size=rng.integers(0, 5), replace=False) for _ in range(2)]  # queries share these
    queries = [(polytopes[rng.integers(2)], feats[rng.integers(n)], np.flatnonzero(rng.random(n) < rng.random()))
               for _ in range(data.draw(st.integers(1, 5)))]
    got = covered_neighbours(feats, bank, iter(queries), top, unit=unit, block=block)
    for (ids, x, cov), g in zip(queries, got, strict=True):
        want = cov[rank_similar(bank[ids], x, feats[cov], unit=unit)[:top]] if len(ids) and len(cov) else cov[:top]
        assert g.tolist() == want.tolist()
