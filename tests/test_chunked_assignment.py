"""Distances in float32 with float64 where comparisons need it (repint.distances), and the assignment and
neighbours computed chunk by chunk with them: the same results as the in-memory float64 code."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from repint.assignment import assign, assign_by_distances, fallbacks
from repint.centres import squared_distances
from repint.distances import (
    direct_estimates,
    direct_squared_distances,
    exact_squared_distances,
    expanded_estimates,
    nearest_rows,
    ordered_distances,
    ordered_squared_distances,
)
from repint.ranking import euclidean_neighbours


@st.composite
def rows(draw: st.DrawFn, integers: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Features ``[n, D]`` and centres ``[V, D]`` with duplicated rows, duplicated centres, rows equidistant
    from two centres (a centre mirrored through the row), near-duplicates that cancel, and ReLU zeros."""
    n, v, d = draw(st.integers(1, 14)), draw(st.integers(1, 7)), draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if integers:
        a, b = rng.integers(-3, 4, (n, d)).astype(np.float32), rng.integers(-3, 4, (v, d)).astype(np.float32)
    else:
        scale = draw(st.sampled_from([1e-3, 0.37, 1.0, 250.0]))
        a = (rng.standard_normal((n, d)) * scale).astype(np.float32)
        b = (rng.standard_normal((v, d)) * scale).astype(np.float32)
        if draw(st.booleans()):
            a, b = np.maximum(a, 0), np.maximum(b, 0)
        if v > 1 and draw(st.booleans()):  # row 0 midway between centres 0 and 1 (up to float32 rounding)
            b[1] = 2 * a[0] - b[0]
        if draw(st.booleans()):  # a centre a hair away from a row: the float32 expansion cancels
            b[-1] = a[-1] + np.float32(scale * 1e-6)
    for _ in range(draw(st.integers(0, 3))):  # duplicates
        if draw(st.booleans()):
            a[rng.integers(n)] = a[rng.integers(n)]
        else:
            b[rng.integers(v)] = b[rng.integers(v)]
    return a, b


def same_order(x: np.ndarray, y: np.ndarray) -> None:
    """Every two entries of a row compare (<, ==, >) alike in ``x`` and ``y``."""
    np.testing.assert_array_equal(np.sign(x[:, :, None] - x[:, None, :]), np.sign(y[:, :, None] - y[:, None, :]))
    np.testing.assert_array_equal(np.argsort(x, axis=1, kind="stable"), np.argsort(y, axis=1, kind="stable"))


@settings(max_examples=150, deadline=None)
@given(rows(), st.sampled_from([1, 3, 16, 256]), st.booleans())
def test_the_bound_holds_and_rows_order_as_in_float64(p, k_block, as64):
    a, b = p
    if as64:  # inputs float32 does not hold: rounded to float32, the bound counts it
        a = a.astype(np.float64) * (1 + 1e-9)
    exact = exact_squared_distances(a, b)
    est, err, _, _ = expanded_estimates(a, b, k_block)
    assert (np.abs(est - exact) <= err).all()
    dist, recomputed = ordered_distances(a, b, k_block)
    np.testing.assert_array_equal(dist[recomputed], exact[recomputed])
    same_order(dist, exact)


@settings(max_examples=100, deadline=None)
@given(rows(integers=True))
def test_on_exact_data_the_distances_are_squared_distances(p):
    """Small integers: float64 is exact, so the pair-by-pair reference is ``squared_distances`` bit for bit and
    the ordered distances compare as it does (ties common)."""
    a, b = p
    today = squared_distances(a, b)
    np.testing.assert_array_equal(exact_squared_distances(a, b), today)
    same_order(ordered_squared_distances(a, b), today)


def test_overflow_and_nan_rows_are_float64():
    a = np.array([[1e20, 0.0], [np.nan, 1.0], [1.0, 2.0]], np.float32)
    b = np.array([[0.0, 0.0], [1e20, 1.0], [1.0, 2.0]], np.float32)
    dist, recomputed = ordered_distances(a, b)
    assert recomputed[:2].all()  # float32 overflows (1e40) in row 0; NaN in row 1
    np.testing.assert_array_equal(dist[:2], squared_distances(a, b)[:2])  # NaN where float64 has NaN
    np.testing.assert_array_equal(dist.argmin(1), squared_distances(a, b).argmin(1))


# the assignment ----------------------------------------------------------------------------------------------
def problem(a: np.ndarray, b: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    n, v, m = len(a), len(b), 5
    ids = np.where(rng.random((v, 3)) < 0.3, -1, rng.integers(0, m, (v, 3)))
    return (a, b, rng.random((n, m)) < 0.5, ids, rng.random((v, 3)) < 0.5, rng.integers(0, 2, n), rng.integers(0, 2, v))


def assert_same(x, y) -> None:  # noqa: ANN001
    for name in ("nearest", "ri_centre", "ri_covered", "cover", "fallback_centre"):
        np.testing.assert_array_equal(getattr(x, name), getattr(y, name), err_msg=name)


@settings(max_examples=100, deadline=None)
@given(st.booleans().flatmap(lambda ints: rows(integers=ints)), st.integers(0, 2**16), st.data())
def test_assign_in_chunks_is_the_float64_assignment(p, seed, data):
    a, b = p
    feats, centres, signs, ids, orient, preds, cls = args = problem(a, b, seed)
    chunk = data.draw(st.integers(1, len(a)))
    integers = bool((a == np.round(a)).all() and (b == np.round(b)).all() and np.abs(a).max() <= 3)
    reference = squared_distances(a, b) if integers else exact_squared_distances(a, b)
    for rule in fallbacks():
        whole = assign(*args, fallback=rule)
        assert_same(whole, assign_by_distances(reference, signs, ids, orient, preds, cls, rule))
        parts = [assign(feats[lo: lo + chunk], centres, signs[lo: lo + chunk], ids, orient, preds[lo: lo + chunk],
                        cls, fallback=rule) for lo in range(0, len(a), chunk)]
        for name in ("nearest", "ri_centre", "ri_covered", "cover", "fallback_centre"):
            np.testing.assert_array_equal(np.concatenate([getattr(q, name) for q in parts]), getattr(whole, name))


def test_ties_by_hand_go_to_the_lowest_centre():
    # c0 = c2 (duplicated); e0 = (t, t) is at s^2 from c0 = (t + s, t) and c1 = (t, t + s) (the same terms,
    # swapped: a float64 tie); e1 is c0 itself; e2 is nearest c3 alone
    t, s = np.float32(0.1), np.float32(0.3)
    centres = np.array([[t + s, t], [t, t + s], [t + s, t], [5, 5]], np.float32)
    feats = np.array([[t, t], [t + s, t], [4.9, 5.2]], np.float32)
    d = ordered_squared_distances(feats, centres)
    assert d[0, 0] == d[0, 1] == d[0, 2] and d[1, 0] == d[1, 2] == 0.0
    # P0 covers nothing (h0 True), P1 and P2 cover everything, P3 (class 1) only class 1
    ids, orient = np.array([[0], [-1], [-1], [-1]]), np.array([[True], [False], [False], [False]])
    signs = np.zeros((3, 1), bool)
    a = assign(feats, centres, signs, ids, orient, np.array([0, 0, 0]), np.array([0, 0, 0, 1]))
    assert a.nearest.tolist() == [0, 0, 3]
    assert a.ri_centre.tolist() == [1, 2, 1]  # e0: c1 and c2 tie among the covering; e1: c2 (0) before c1
    assert a.ri_covered.all()
    np.testing.assert_array_equal(a.nearest, squared_distances(feats, centres).argmin(1))


# the neighbours ----------------------------------------------------------------------------------------------
def float64_neighbours(f: np.ndarray, x: int, top: int) -> np.ndarray:
    """What euclidean_neighbours computed before: float64 direct distances, x at inf, a stable sort."""
    dist = direct_squared_distances(f, f[x])
    dist[x] = np.inf
    return np.argsort(dist, kind="stable")[:top]


@settings(max_examples=150, deadline=None)
@given(rows(), st.booleans(), st.data())
def test_neighbours_in_blocks_are_the_float64_ones(p, integers, data):
    a, _ = p
    if integers:
        a = np.round(a / max(1e-30, float(np.abs(a).max())) * 3).astype(np.float32)  # ties galore
    n = len(a)
    x, top, block = data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, n + 1)), data.draw(st.integers(1, n))
    k_block = data.draw(st.sampled_from([1, 4, 256]))
    got = nearest_rows(lambda lo, hi: a[lo:hi], n, x, top, block, k_block)
    np.testing.assert_array_equal(got, float64_neighbours(a, x, top))
    np.testing.assert_array_equal(euclidean_neighbours(a.reshape(n, 1, -1, 1), x, top, block), got)
    est, err = direct_estimates(a, a[x], k_block)
    assert (np.abs(est - direct_squared_distances(a, a[x])) <= err).all()


def test_neighbours_of_float64_and_non_finite_rows():
    f = np.array([[0.0, 0.0], [np.nan, 0.0], [1.0, 0.0], [np.inf, 0.0], [1.0, 0.0], [0.5, 0.5]])
    for top in range(7):
        for ff in (f, f.astype(np.float32)):
            np.testing.assert_array_equal(euclidean_neighbours(ff, 0, top, block=2), float64_neighbours(ff, 0, top))
    assert euclidean_neighbours(f, 0, 6).tolist() == [5, 2, 4, 0, 3, 1]  # x and the inf row by index, then NaN


def test_where_float32_cannot_tell_the_order_the_float64_order_is_kept():
    """Rows on the unit sphere in 3-D: every distance to the origin is 1 within float32's resolution, so the
    float32 estimates order them otherwise than float64 does (checked); the results are float64's."""
    rng = np.random.default_rng(11)
    sphere = rng.standard_normal((3000, 3))
    f = np.vstack([np.zeros((1, 3)), sphere / np.linalg.norm(sphere, axis=1, keepdims=True)]).astype(np.float32)
    est, _ = direct_estimates(f, f[0])
    exact = direct_squared_distances(f, f[0])
    assert (np.argsort(est[1:], kind="stable") != np.argsort(exact[1:], kind="stable")).any()
    for top in (1, 5, 40):
        for block in (64, 5000):
            np.testing.assert_array_equal(euclidean_neighbours(f, 0, top, block), float64_neighbours(f, 0, top))
    points, centres = f[:1] + np.float32(1e-4) * f[1:4], f[1:200]  # ~1e-4 from the origin: all centres ~1 away
    np.testing.assert_array_equal(ordered_squared_distances(points, centres).argmin(1),
                                  exact_squared_distances(points, centres).argmin(1))
    same_order(ordered_squared_distances(points, centres), exact_squared_distances(points, centres))


# the task ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [1, 7, 500])
def test_assign_unseen_in_chunks_writes_the_whole_sets_assignment(tmp_path, chunk_size):
    from repint.signs import pack_signs
    from repint.storage import FeatureStore
    from repint.storage.layout import ASSIGNMENT, BOUNDARIES, CENTRES, INGEST, POLYTOPES, SIGNS
    from repint.tasks.evaluate import assign_unseen
    from repint.tasks.runspec import RunSpec

    rng = np.random.default_rng(3)
    n, v, m = 40, 6, 11
    feats = np.maximum(rng.standard_normal((n, 4, 3, 3)), 0).astype(np.float32)
    centres = feats[rng.choice(n, v, replace=False)].reshape(v, -1) * np.float32(0.9)
    centres[5] = centres[2]  # a duplicated centre
    signs, preds, cls = rng.random((n, m)) < 0.5, rng.integers(0, 3, n), rng.integers(0, 3, v)
    ids = np.where(rng.random((v, 4)) < 0.3, -1, rng.integers(0, m, (v, 4)))
    orient = rng.random((v, 4)) < 0.5
    store = FeatureStore(str(tmp_path / "s.zarr"))
    unseen, polytopes, cen = INGEST.of("unseen"), POLYTOPES.of(), CENTRES.of()
    for path, value in ((unseen["features"], feats), (unseen["predictions"], preds),
                        (SIGNS.of("unseen")[""], pack_signs(signs)), (BOUNDARIES.of()["b"], np.zeros(m)),
                        (cen["vectors"], centres), (cen["predicted_class"], cls),
                        (polytopes["boundaries"], ids), (polytopes["orientation"], orient)):
        store.write(path, value, chunks=(7, *np.shape(value)[1:]) if len(value) == n else None)
    for stage in (polytopes.name, SIGNS.of("unseen").name):
        store.begin_stage(stage, "fp", 1)
        store.mark_unit_done(stage, 0)
        store.finish_stage(stage)
    for rule in fallbacks():
        spec = RunSpec(store=str(tmp_path / "s.zarr"), out_dir=str(tmp_path), dataset="d", reference={}, unseen={},
                       model={}, runtime={"chunk_size": chunk_size}, evaluation={"fallback": rule})
        info = assign_unseen.fn(spec)
        whole = assign(feats, centres, signs, ids, orient, preds, cls, fallback=rule)
        assert info == {"covered_unseen": int(whole.ri_covered.sum()), "n_unseen": n}
        out = ASSIGNMENT.of()
        for name in ("nearest", "ri_centre", "ri_covered", "fallback_centre"):
            got = store.read(out[name])
            np.testing.assert_array_equal(got, getattr(whole, name), err_msg=name)
            assert got.dtype == getattr(whole, name).dtype
            assert store.root[out[name]].chunks == got.shape  # one chunk, written whole, as the layout declares
