r"""Interpretations ``V``: k-means centres on flattened ψ of the reference set.

Three fits of the same objective, :math:`\min_{c} \sum_i \min_v \lVert ψ(x_i) - c_v \rVert^2`
(:data:`KMEANS`):

- ``exact``: scikit-learn's ``KMeans`` (Lloyd, k-means++ init, one init) on the whole array in memory:
  the paper's and every published number's; used for stores up to :data:`EXACT_MAX_BYTES`.
- ``minibatch``: scikit-learn's ``MiniBatchKMeans.partial_fit`` over chunks read from the store
  (Sculley 2010): k-means++ on a spread sample of ``INIT_FACTOR x k`` rows, then :data:`EPOCHS`
  passes over the chunks in a seeded random order; memory is one chunk plus the centres.
- ``dask``: on a Dask cluster: dask-ml's k-means|| initialisation, then Lloyd steps whose tasks read
  the store's chunks one at a time (:func:`dask_kmeans`): no process holds more than a chunk of ψ.

After every fit one more pass over the chunks gives each image's cluster (``labels``) and, in the
same pass, each centre's nearest reference image (``input_index``: the input of that
interpretation), :math:`\arg\min_i \lVert ψ(x_i) - c_v \rVert^2` (ties: lowest index).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["EPOCHS", "EXACT_MAX_BYTES", "KMEANS", "Centres", "assign_nearest", "choose_kmeans", "dask_kmeans",
           "kmeans_centres", "nearest_pass", "squared_distances", "streaming_kmeans"]

KMEANS = ("auto", "exact", "minibatch", "dask")  #: ``interpretation.kmeans`` (auto: :func:`choose_kmeans`)
#: float32 reference features up to which ``auto`` fits exact k-means in memory; that fit holds them, a float64
#: copy and the ``[V, N]`` float64 distances of :func:`assign_nearest`: a few times this, whatever N
EXACT_MAX_BYTES = 1 << 30
EPOCHS = 3  #: minibatch: passes over the reference chunks
INIT_FACTOR = 3  #: minibatch: k-means++ initialises on ``INIT_FACTOR x k`` rows (at least one chunk)
DASK_MAX_ITER = 30  #: dask: Lloyd iterations at most (each reads every chunk once)
DASK_TOL = 1e-4  #: dask: stop when the centres moved less than this (sum of squares: dask-ml's rule)
DASK_INIT_ROUNDS = 2  #: dask: k-means|| rounds of the initialisation (each reads every chunk)
#: dask: k-means|| draws ``ℓ = DASK_OVERSAMPLING x k`` candidates a round in expectation (Bahmani et al. 2012's
#: ℓ = 2k, Spark MLlib's); dask-ml's default ℓ = 2 whatever k left most centres random rows. dask-ml still
#: fills with random rows (and warns) where fewer than k are drawn: a total cost under about 4.5 runs
#: ``round(ln cost) < 2`` rounds. The second round's tasks each carry the first round's candidates, and
#: the client reclusters all ~4k: at 10,000 centres of ψ 512x14x14, gigabytes a task (docs/scaling.md)
DASK_OVERSAMPLING = 2
DASK_TASKS_PER_WORKER = 2  #: dask: tasks per worker in each Lloyd step, each over a run of chunks

#: ``read(lo, hi)``: reference rows ``[lo, hi)`` flattened, float32 ``[hi - lo, D]``
ChunkReader = Callable[[int, int], np.ndarray]


@dataclass
class Centres:
    """``centres`` ``[V, D]``, ``labels`` ``[N]`` (cluster of each reference image), ``input_index``
    ``[V]`` (the reference image nearest each centre: the input of that interpretation); ``algorithm``
    (:data:`KMEANS` but ``auto``), ``zero_rows`` (images whose ψ is all zero) and ``fit`` (what the
    fit reports: iterations, inertia, passes over the data)."""

    centres: np.ndarray
    labels: np.ndarray
    input_index: np.ndarray
    algorithm: str = "exact"
    zero_rows: int = 0
    fit: dict[str, Any] = field(default_factory=dict)


def choose_kmeans(requested: str, n: int, d: int, cluster: bool) -> str:
    """The fit ``requested`` (:data:`KMEANS`); ``auto``: ``exact`` when ``n x d`` float32 values fit in
    :data:`EXACT_MAX_BYTES`, else ``dask`` on a Dask cluster (``cluster``) and ``minibatch`` without."""
    if requested not in KMEANS:
        raise ValueError(f"interpretation.kmeans {requested!r} is not one of {', '.join(KMEANS)}")
    if requested != "auto":
        return requested
    if n * d * 4 <= EXACT_MAX_BYTES:
        return "exact"
    return "dask" if cluster else "minibatch"


def kmeans_centres(features: np.ndarray, n_clusters: int, seed: int = 0) -> Centres:
    """Exact k-means with ``n_clusters`` (clamped to the number of images) on ``features`` ``[N, ...]``
    in memory (scikit-learn's ``KMeans``, k-means++, one init)."""
    from sklearn.cluster import KMeans

    flat = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    k = min(n_clusters, len(flat))
    km = KMeans(n_clusters=k, random_state=seed, n_init="auto").fit(flat)
    centres = km.cluster_centers_.astype(np.float32)
    return Centres(centres=centres, labels=km.labels_.astype(np.int64), input_index=assign_nearest(centres, flat),
                   algorithm="exact", zero_rows=int((flat == 0).all(1).sum()),
                   fit={"n_iter": int(km.n_iter_), "inertia": float(km.inertia_), "passes": "in memory"})


def _chunks(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]


def nearest_pass(read: ChunkReader, n: int, centres: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray, int]:
    """One pass over the chunks: ``labels`` ``[N]`` (nearest centre of each row), ``input_index`` ``[V]``
    (nearest row of each centre, ties to the lowest index) and the number of all-zero rows; distances
    in float64 (:func:`squared_distances`), one chunk at a time. Distances equal within float64 rounding
    may be ordered otherwise with another chunk size (BLAS rounds products of other shapes otherwise)."""
    c64 = np.asarray(centres, dtype=np.float64).reshape(len(centres), -1)  # once, not once per chunk
    return _merge_nearest((_block_nearest(read(lo, hi), c64) for lo, hi in _chunks(n, chunk)), len(centres))


def _block_nearest(block: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One block's labels, each centre's smallest distance in it and the row of that distance (the first
    among equals), and its all-zero rows."""
    x = np.asarray(block, dtype=np.float32).reshape(len(block), -1)
    d = squared_distances(x, centres)
    rows = np.argmin(d, axis=0)
    return (np.argmin(d, axis=1).astype(np.int64), d[rows, np.arange(len(centres))], rows.astype(np.int64),
            int((x == 0).all(1).sum()))


def _merge_nearest(blocks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, int]],
                   k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`_block_nearest` of consecutive blocks -> labels, each centre's nearest row (strictly closer
    only: an earlier block keeps a tie) and the all-zero rows, merged as the blocks arrive."""
    best, index, zero, lo, labels = np.full(k, np.inf), np.zeros(k, dtype=np.int64), 0, 0, []
    for block_labels, dmin, rows, z in blocks:
        closer = dmin < best
        best[closer], index[closer] = dmin[closer], lo + rows[closer]
        lo, zero = lo + len(block_labels), zero + z
        labels.append(block_labels)
    return np.concatenate(labels), index, zero


def streaming_kmeans(read: ChunkReader, n: int, n_clusters: int, chunk: int, seed: int = 0,
                     epochs: int = EPOCHS) -> Centres:
    """Mini-batch k-means over the ``n`` rows that ``read`` returns chunk by chunk: k-means++ on a
    seeded spread sample of ``max(INIT_FACTOR x k, chunk)`` rows, then ``epochs`` passes of
    ``partial_fit`` over the chunks in a seeded random order (batches of at least ``k`` rows), then
    :func:`nearest_pass`. Memory: one batch, the sample and the centres."""
    from sklearn.cluster import MiniBatchKMeans, kmeans_plusplus

    rng = np.random.default_rng(seed)
    k = min(n_clusters, n)
    size = min(n, max(INIT_FACTOR * k, chunk))
    sample_rows = np.sort(rng.choice(n, size=size, replace=False))
    sample = np.concatenate([read(lo, hi)[sample_rows[(sample_rows >= lo) & (sample_rows < hi)] - lo]
                             for lo, hi in _chunks(n, chunk)
                             if ((sample_rows >= lo) & (sample_rows < hi)).any()])
    init, _ = kmeans_plusplus(sample, k, random_state=seed)
    del sample
    km = MiniBatchKMeans(n_clusters=k, init=init, n_init=1, batch_size=chunk, random_state=seed,
                         compute_labels=False)
    spans = _chunks(n, chunk)
    for _ in range(epochs):
        for g in _batches(spans, rng.permutation(len(spans)), k):
            km.partial_fit(np.concatenate([read(*spans[j]) for j in g]))
    centres = km.cluster_centers_.astype(np.float32)
    labels, index, zero = nearest_pass(read, n, centres, chunk)
    return Centres(centres=centres, labels=labels, input_index=index, algorithm="minibatch", zero_rows=zero,
                   fit={"epochs": epochs, "init_rows": size, "passes": epochs + 2,
                        "steps": int(km.n_steps_)})


def _batches(spans: list[tuple[int, int]], order: np.ndarray, k: int) -> list[list[int]]:
    """The chunks ``order`` names, grouped in that order into batches of at least ``k`` rows (the
    last too short one joins the one before): ``partial_fit`` needs as many rows as centres."""
    groups: list[list[int]] = [[]]
    rows = 0
    for j in order.tolist():
        if rows >= k:
            groups.append([])
            rows = 0
        groups[-1].append(j)
        rows += spans[j][1] - spans[j][0]
    if rows < k and len(groups) > 1:
        groups[-2].extend(groups.pop())
    return groups


def dask_kmeans(read: ChunkReader, n: int, d: int, n_clusters: int, chunk: int, seed: int = 0,
                max_iter: int = DASK_MAX_ITER, tol: float = DASK_TOL) -> Centres:
    """k-means on the active distributed client over the ``n`` rows of ``d`` values that ``read`` (picklable:
    it runs on the workers) returns chunk by chunk: dask-ml's k-means|| initialisation (``k_init``, over a
    Dask array of the chunks, each pass reading every chunk once; ``ℓ = 2k`` candidates a round, then
    k-means++ on them), then at most ``max_iter`` Lloyd steps
    (dask-ml's: stop when the centres move less than ``tol``, squared), each a few tasks per worker that read
    their run of chunks one at a time and return per-centre sums and counts, added on the client in task
    order (the same centres every run). dask-ml's own ``KMeans`` uses a chunk twice in one graph (the labels,
    then the sums), so its workers held most of ψ at once (17 GB at 200,000 images of ψ 512x7x7 on a
    2-worker cluster); here a worker holds one chunk, ``k`` sums and the centres. An empty cluster keeps
    its centre. Labels and inputs from one more such pass."""
    import dask
    import dask.array as da
    from dask_ml.cluster.k_means import k_init
    from distributed import get_client

    k, client = min(n_clusters, n), get_client()
    spans = _chunks(n, chunk)
    x = da.concatenate([da.from_delayed(dask.delayed(read)(lo, hi), shape=(hi - lo, d), dtype=np.float32)
                        for lo, hi in spans])
    ell = DASK_OVERSAMPLING * k
    centres = np.asarray(k_init(x, k, init="k-means||", random_state=seed, max_iter=DASK_INIT_ROUNDS,
                                oversampling_factor=ell), dtype=np.float32)
    runs = np.array_split(np.arange(len(spans)), min(len(spans), DASK_TASKS_PER_WORKER * max(
        1, len(client.scheduler_info()["workers"]))))
    steps = 0
    while steps < max_iter:
        steps += 1
        shared = client.scatter(centres, broadcast=True)
        sums, counts, inertia = np.zeros((k, d)), np.zeros(k), 0.0
        for part_sums, part_counts, part_inertia in _in_order(
                [client.submit(_lloyd_sums, read, [spans[j] for j in r], shared, pure=False) for r in runs]):
            sums, counts, inertia = sums + part_sums, counts + part_counts, inertia + part_inertia
        moved = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centres).astype(np.float32)
        shift, centres = float(((moved.astype(np.float64) - centres) ** 2).sum()), moved
        if shift < tol:
            break
    shared = client.scatter(centres, broadcast=True)
    labels, index, zero = _merge_nearest(_in_order([client.submit(_read_nearest, read, lo, hi, shared, pure=False)
                                                    for lo, hi in spans]), k)
    return Centres(centres=centres, labels=labels, input_index=index, algorithm="dask", zero_rows=zero,
                   fit={"n_iter": steps, "inertia": inertia, "max_iter": max_iter, "init": "k-means||",
                        "oversampling": ell,
                        "passes": f"{DASK_INIT_ROUNDS} init rounds + {steps + 1}", "tasks_per_pass": len(runs)})


def _lloyd_sums(read: ChunkReader, spans: list[tuple[int, int]], centres: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, float]:
    """One Lloyd step's share of ``spans`` (read one at a time): per centre the float64 sum and count of
    the rows nearest it, and their squared distances summed (the inertia before the step)."""
    k, d = centres.shape
    sums, counts, inertia = np.zeros((k, d)), np.zeros(k), 0.0
    c64 = np.asarray(centres, dtype=np.float64)
    for lo, hi in spans:
        x = np.asarray(read(lo, hi), dtype=np.float32).reshape(hi - lo, -1)
        dist = squared_distances(x, c64)
        nearest = np.argmin(dist, axis=1)
        order = np.argsort(nearest, kind="stable")  # rows by centre, summed run by run (O(rows x d))
        owners, starts = np.unique(nearest[order], return_index=True)
        sums[owners] += np.add.reduceat(x[order].astype(np.float64), starts, axis=0)
        counts += np.bincount(nearest, minlength=k)
        inertia += float(dist[np.arange(len(x)), nearest].sum())
    return sums, counts, inertia


def _read_nearest(read: ChunkReader, lo: int, hi: int, centres: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    return _block_nearest(read(lo, hi), centres)


def _in_order(futures: list[Any]) -> Iterator[Any]:
    """Each future's result in the order given, each released once taken: the client holds the results
    not yet merged, not all of them."""
    for i, f in enumerate(futures):
        yield f.result()
        f.release()
        futures[i] = None


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[len(a), len(b)]`` squared Euclidean distances between flattened rows, in float64."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)  # no copy of what is float64
    return (a64 ** 2).sum(1)[:, None] - 2 * a64 @ b64.T + (b64 ** 2).sum(1)[None, :]


def assign_nearest(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """For each of ``points`` the index of the nearest of ``centres`` (Euclidean)."""
    p = np.asarray(points, dtype=np.float32).reshape(len(points), -1)
    c = np.asarray(centres, dtype=np.float32).reshape(len(centres), -1)
    return np.argmin(squared_distances(p, c), axis=1).astype(np.int64)
