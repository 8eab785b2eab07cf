"""The drift maths (repint.drift): two versions' covers aligned on image ids, and the images a matched
pair of centres is compared on, by hand and by properties. (Jaccard, matching and Pearson by hand are
in test_drift.py.)"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from repint.drift import align_covers, compared_images, jaccard_matrix

# new version: images b, c, a; centre 0 covers {b, c}, centre 1 {a}, centre 2 {c}
IDS_NEW = np.array(["b", "c", "a"])
COVER_NEW = np.array([[1, 1, 0], [0, 0, 1], [0, 1, 0]], bool)
# previous version: images d, a, b; its one centre covers {a, b}
IDS_PREV = np.array(["d", "a", "b"])
COVER_PREV = np.array([[0, 1, 1]], bool)


def test_align_covers_by_hand():
    al = align_covers(IDS_NEW, COVER_NEW, IDS_PREV, COVER_PREV)
    assert al.universe.tolist() == ["a", "b", "c", "d"]
    assert al.pos_new.tolist() == [1, 2, 0] and al.pos_prev.tolist() == [3, 0, 1]
    assert al.row_new.tolist() == [2, 0, 1, -1] and al.row_prev.tolist() == [1, 2, -1, 0]
    np.testing.assert_array_equal(al.new, [[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 1, 0]])
    np.testing.assert_array_equal(al.prev, [[1, 1, 0, 0]])
    # {b, c} vs {a, b}: 1 / 3; {a} vs {a, b}: 1 / 2; {c} vs {a, b}: 0
    np.testing.assert_allclose(jaccard_matrix(al.new, al.prev), [[1 / 3], [1 / 2], [0.0]])


def test_compared_images_by_hand():
    al = align_covers(IDS_NEW, COVER_NEW, IDS_PREV, COVER_PREV)
    # covered by both: b, row 0 of the new version and row 2 of the previous one
    rn, rp = compared_images(al, 0, 0, "b", "a", 32)
    assert rn.tolist() == [0] and rp.tolist() == [2]
    # {c} and {a, b} share nothing: the two inputs c and a, of which only a is in both versions
    rn, rp = compared_images(al, 2, 0, "c", "a", 32)
    assert rn.tolist() == [2] and rp.tolist() == [1]
    # the same input twice counts once
    rn, rp = compared_images(al, 2, 0, "b", "b", 32)
    assert rn.tolist() == [0] and rp.tolist() == [2]
    # inputs held by one version only: nothing to compare
    rn, rp = compared_images(al, 2, 0, "c", "d", 32)
    assert rn.tolist() == [] and rp.tolist() == [] and rn.dtype == np.int64


def test_compared_images_are_thinned_evenly_in_id_order():
    ids = np.array([f"i{k}" for k in range(10)])
    cover = np.ones((1, 10), bool)
    al = align_covers(ids, cover, ids[::-1], cover)  # the previous version holds them in reverse
    rn, rp = compared_images(al, 0, 0, "i0", "i0", 4)
    # linspace(0, 9, 4) = 0, 3, 6, 9
    assert rn.tolist() == [0, 3, 6, 9] and rp.tolist() == [9, 6, 3, 0]


@st.composite
def versions(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    pool = [f"img{k:02d}" for k in range(draw(st.integers(1, 15)))]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ids_n = rng.permutation(np.array(pool)[rng.random(len(pool)) < 0.7])
    ids_p = rng.permutation(np.array(pool)[rng.random(len(pool)) < 0.7])
    cover_n = rng.random((draw(st.integers(1, 4)), len(ids_n))) < 0.5
    cover_p = rng.random((draw(st.integers(1, 4)), len(ids_p))) < 0.5
    return ids_n.astype(str), cover_n, ids_p.astype(str), cover_p


@settings(max_examples=100, deadline=None)
@given(versions(), st.integers(1, 6))
def test_alignment_properties(v, max_images):
    ids_n, cover_n, ids_p, cover_p = v
    al = align_covers(ids_n, cover_n, ids_p, cover_p)
    assert al.universe.tolist() == sorted(set(ids_n) | set(ids_p))
    np.testing.assert_array_equal(al.universe[al.pos_new], ids_n)
    np.testing.assert_array_equal(al.new[:, al.pos_new], cover_n)
    assert al.new.sum() == cover_n.sum() and al.prev.sum() == cover_p.sum()  # nothing outside a version
    np.testing.assert_array_equal(al.row_new[al.pos_new], np.arange(len(ids_n)))
    assert (al.row_new >= 0).sum() == len(ids_n)
    # the Jaccard of two covers is that of the sets of ids they cover, whatever the order of the images
    sets_n = [set(ids_n[c]) for c in cover_n]
    sets_p = [set(ids_p[c]) for c in cover_p]
    expected = [[len(a & b) / len(a | b) if a | b else 0.0 for b in sets_p] for a in sets_n]
    np.testing.assert_allclose(jaccard_matrix(al.new, al.prev), expected)
    inputs = (str(ids_n[0]) if len(ids_n) else "", str(ids_p[0]) if len(ids_p) else "")
    for i in range(len(cover_n)):
        for j in range(len(cover_p)):
            rn, rp = compared_images(al, i, j, *inputs, max_images)
            assert len(rn) == len(rp) <= max_images
            np.testing.assert_array_equal(ids_n[rn], ids_p[rp])  # the same images in both versions
            assert list(ids_n[rn]) == sorted(set(ids_n[rn]))  # distinct, in id order
            both = sets_n[i] & sets_p[j]
            assert set(ids_n[rn]) <= (both or set(inputs))  # covered by both, else the inputs
            compared = both or set(inputs) & set(ids_n) & set(ids_p)
            if max_images >= len(compared):  # nothing thinned out
                assert set(ids_n[rn]) == compared
