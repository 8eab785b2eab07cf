"""The centres V fitted three ways (repint.centres): exact in memory, mini-batch chunk by chunk, and
on a real Dask cluster (dask-ml's k-means|| init, Lloyd steps chunk by chunk); the pass that gives
labels and inputs chunk by chunk equals the in-memory argmin; the stage picks the fit by size, records
it and keeps exact stores' fingerprints."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from conftest import tiny_config, with_model
from hypothesis import given, settings
from hypothesis import strategies as st

from repint.centres import (
    EPOCHS,
    EXACT_MAX_BYTES,
    KMEANS,
    assign_nearest,
    choose_kmeans,
    dask_kmeans,
    kmeans_centres,
    nearest_pass,
    squared_distances,
    streaming_kmeans,
)


def _blobs(n_per: int = 60, k: int = 4, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``k`` well-separated clusters (centres 20 apart, spread 0.5): any sound k-means finds them."""
    rng = np.random.default_rng(seed)
    centres = 20.0 * np.eye(k, d)
    truth = np.repeat(np.arange(k), n_per)
    x = (centres[truth] + 0.5 * rng.standard_normal((len(truth), d))).astype(np.float32)
    perm = rng.permutation(len(x))
    return x[perm], truth[perm]


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal clusterings up to renaming the clusters."""
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_choose_kmeans_by_size_and_cluster():
    d = 512 * 7 * 7
    small = EXACT_MAX_BYTES // (4 * d)  # the most images whose float32 ψ fits the exact bound
    assert choose_kmeans("auto", small, d, cluster=False) == "exact"
    assert choose_kmeans("auto", small + 1, d, cluster=False) == "minibatch"
    assert choose_kmeans("auto", small + 1, d, cluster=True) == "dask"
    assert choose_kmeans("auto", 10, 10, cluster=True) == "exact"  # a small store stays exact on a cluster
    for forced in KMEANS[1:]:
        assert choose_kmeans(forced, 10**7, d, cluster=False) == forced
    with pytest.raises(ValueError, match="not one of auto"):
        choose_kmeans("lloyd", 10, 10, cluster=False)


def test_nearest_pass_by_hand():
    # rows 0..4 on a line, centres at 0.4 and 3.0: labels by the nearer; inputs: row 0 (0.16) and row 3 (0)
    x = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]], dtype=np.float32)
    centres = np.array([[0.4], [3.0]], dtype=np.float32)
    for chunk in (1, 2, 5):
        labels, index, zero = nearest_pass(lambda lo, hi: x[lo:hi], 5, centres, chunk)
        assert labels.tolist() == [0, 0, 1, 1, 1]
        assert index.tolist() == [0, 3]
        assert zero == 1  # row 0 is all zero


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 6), chunk=st.integers(1, 50), seed=st.integers(0, 10**6),
       dup=st.booleans())
def test_nearest_pass_equals_in_memory(n, k, chunk, seed, dup):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, (n, 3)).astype(np.float32)  # small integers: many exact ties
    if dup:
        x[n // 2:] = x[: n - n // 2]
    centres = rng.integers(0, 3, (k, 3)).astype(np.float32)
    labels, index, _ = nearest_pass(lambda lo, hi: x[lo:hi], n, centres, chunk)
    d = squared_distances(x, centres)
    assert np.array_equal(labels, np.argmin(d, axis=1))  # ties: the lowest centre
    assert np.array_equal(index, np.argmin(d, axis=0))  # ties: the lowest image, across chunks too


def test_streaming_equals_exact_on_separated_clusters():
    x, truth = _blobs()
    exact = kmeans_centres(x, 4, seed=0)
    for chunk in (7, 32, 500):
        s = streaming_kmeans(lambda lo, hi: x[lo:hi], len(x), 4, chunk, seed=0)
        assert s.algorithm == "minibatch" and s.centres.shape == (4, 6)
        assert _same_partition(s.labels, truth) and _same_partition(s.labels, exact.labels)
        assert np.array_equal(s.input_index, assign_nearest(s.centres, x))  # each centre's nearest image
        assert np.array_equal(s.labels, assign_nearest(x, s.centres))
        order = np.argsort(s.centres[:, 0])  # the same centres as exact, up to order, within the spread
        assert np.abs(np.sort(exact.centres, axis=0) - np.sort(s.centres, axis=0)).max() < 0.5, order


def test_streaming_is_seeded_and_reads_each_chunk_at_most_epochs_plus_two_times():
    """The same seed gives the same fit; every chunk is read once per epoch, once for the labels and at
    most once for the k-means++ sample (``fit["passes"]``), one chunk at a time."""
    x, _ = _blobs(n_per=40, k=5)
    reads: list[tuple[int, int]] = []

    def read(lo: int, hi: int) -> np.ndarray:
        reads.append((lo, hi))
        return x[lo:hi].copy()

    a = streaming_kmeans(read, len(x), 5, 16, seed=3)
    b = streaming_kmeans(lambda lo, hi: x[lo:hi], len(x), 5, 16, seed=3)
    assert np.array_equal(a.centres, b.centres) and np.array_equal(a.input_index, b.input_index)
    spans = {(lo, min(lo + 16, len(x))) for lo in range(0, len(x), 16)}
    assert set(reads) == spans and a.fit["passes"] == EPOCHS + 2
    assert all(EPOCHS + 1 <= reads.count(s) <= EPOCHS + 2 for s in spans)


def test_streaming_more_centres_than_a_chunk():
    x = np.random.default_rng(1).random((300, 4), dtype=np.float32)
    s = streaming_kmeans(lambda lo, hi: x[lo:hi], len(x), 50, 16, seed=0)  # batches of >= 50 rows from 4 chunks
    assert s.centres.shape == (50, 4) and s.labels.shape == (300,)
    assert np.array_equal(s.labels, assign_nearest(x, s.centres))


@pytest.fixture(scope="module")
def dask_client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as cluster, \
            Client(cluster, set_as_default=True) as client:
        yield client


def test_dask_kmeans_on_a_cluster(dask_client):
    """k-means|| then Lloyd steps whose tasks read runs of chunks: the clusters found, each centre the
    mean of its rows (Lloyd's fixed point: sums and counts added right across tasks), labels and inputs
    the float64 nearest ones, and the same centres on a second run (sums added in task order)."""
    x, truth = _blobs()
    c = dask_kmeans(lambda lo, hi: x[lo:hi], len(x), x.shape[1], 4, 37, seed=0)  # the lambda goes to the workers
    assert c.algorithm == "dask" and 1 <= c.fit["n_iter"] < 30 and c.fit["tasks_per_pass"] == 4
    assert _same_partition(c.labels, truth)
    for j in range(4):
        np.testing.assert_allclose(c.centres[j], x[c.labels == j].mean(0), rtol=1e-5, atol=1e-5)
    again = dask_kmeans(lambda lo, hi: x[lo:hi], len(x), x.shape[1], 4, 37, seed=0)
    assert np.array_equal(again.centres, c.centres)
    assert np.array_equal(c.labels, assign_nearest(x, c.centres))
    assert np.array_equal(c.input_index, assign_nearest(c.centres, x))


def test_dask_kmeans_initialises_from_enough_candidates(dask_client, caplog):
    """k-means|| draws about 2k candidates a round: with dask-ml's default (2 a round, whatever k) the
    init found 2 to 6 candidates for 12 centres, filled the rest with random rows, and Lloyd from there
    merged blobs (inertia 13-24x, seeds 0-3)."""
    x, truth = _blobs(n_per=30, k=12, d=12)
    with caplog.at_level(logging.WARNING, logger="dask_ml.cluster.k_means"):
        c = dask_kmeans(lambda lo, hi: x[lo:hi], len(x), x.shape[1], 12, 50, seed=0)
    assert not [r for r in caplog.records if "fewer than" in r.getMessage()] and c.fit["oversampling"] == 24
    assert _same_partition(c.labels, truth)


@pytest.mark.slow
def test_centres_stage_streams_the_store(prefect_harness, repint_cache, tmp_path):
    """compute_centres with interpretation.kmeans forced to minibatch reads the store chunk by chunk and
    stores exactly what streaming_kmeans gives on the whole array; then dask on a local cluster; the fit
    is recorded; exact (auto on a small store) keeps the fingerprint and the in-memory result."""
    from repint.flows.spec import build_spec
    from repint.flows.stages import centres_flow, ingest_flow
    from repint.storage import FeatureStore

    cfg = tiny_config(200, 2, 20)
    cfg.runtime.chunk_size = 48
    spec = with_model(build_spec(cfg, tmp_path))
    ingest_flow(spec)
    store = FeatureStore(spec.store, mode="r")
    feats = store.read("reference/features")
    flat = feats.reshape(len(feats), -1)

    centres_flow(spec)
    store = FeatureStore(spec.store, mode="r")  # the root's attributes as of now
    exact = kmeans_centres(feats, 20, seed=0)
    assert np.array_equal(store.read("centres/vectors"), exact.centres)
    assert store.attrs["kmeans"]["algorithm"] == "exact" and store.attrs["kmeans"]["requested"] == "auto"
    fp_exact = store.attrs["stages"]["centres"]["fingerprint"]

    for forced in ("minibatch", "dask"):
        cfg.interpretation.kmeans = forced
        spec_f = spec.model_copy(update={"interpretation": cfg.interpretation.model_copy()})
        centres_flow(spec_f)
        store = FeatureStore(spec.store, mode="r")
        assert store.attrs["stages"]["centres"]["fingerprint"] != fp_exact  # new centres, new fingerprint
        assert store.attrs["kmeans"]["algorithm"] == forced
        vectors, labels = store.read("centres/vectors"), store.read("centres/labels")
        if forced == "minibatch":
            want = streaming_kmeans(lambda lo, hi: flat[lo:hi], len(flat), 20, 48, seed=0)
            assert np.array_equal(vectors, want.centres)
        assert np.array_equal(labels, assign_nearest(flat, vectors))
        assert np.array_equal(store.read("centres/input_index"), assign_nearest(vectors, flat))
        preds = store.read("reference/predictions")
        assert np.array_equal(store.read("centres/predicted_class"), preds[store.read("centres/input_index")])
    json.dumps(store.attrs["kmeans"])  # plain JSON for the summary


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 200), chunk=st.integers(1, 64), k=st.integers(1, 80), seed=st.integers(0, 99))
def test_batches_hold_k_rows_and_every_chunk_once(n, chunk, k, seed):
    from repint.centres import _batches, _chunks

    k = min(k, n)
    spans = _chunks(n, chunk)
    order = np.random.default_rng(seed).permutation(len(spans))
    groups = _batches(spans, order, k)
    assert sorted(j for g in groups for j in g) == list(range(len(spans)))
    assert [j for g in groups for j in g] == order.tolist()  # the seeded order is kept
    assert all(sum(spans[j][1] - spans[j][0] for j in g) >= k for g in groups)
