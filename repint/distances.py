r"""Squared Euclidean distances in float32, exact in float64 exactly where a comparison needs it.

The float64 references are the formulas of the float64 code they replace, evaluated pair by pair:

- *expanded* (:func:`repint.centres.squared_distances`, the assignment's distances to the centres),
  :math:`d_{64}(a, b) = \mathrm{fl}(\mathrm{fl}(n_a - 2\,\hat g) + n_b)` with
  :math:`n_a = \sum_k a_k^2` (``(a64 ** 2).sum()``: bit for bit the same as ``squared_distances``'s) and
  :math:`\hat g = \langle a, b \rangle` the float64 dot product of the pair alone (``(a64 * b64).sum()``,
  numpy's pairwise sum: the same bits whatever else is computed with it);
- *direct* (:func:`repint.ranking.euclidean_neighbours`), :math:`d_{64}(f, x) = \sum_k (f_k - x_k)^2`,
  ``((f64 - x64) ** 2).sum()``: bit for bit what that function computed before.

The estimate :math:`\tilde d` is computed from float32 inputs, the feature axis cut into blocks of
``β = min(D, k_block)`` (:data:`K_BLOCK`) whose float32 products/sums are added in float64. With
:math:`u = 2^{-24}`, :math:`w = 2^{-53}`, :math:`γ_m(u) = mu / (1 - mu)` (Higham, *Accuracy and
Stability of Numerical Algorithms*, Lemma 3.1 and eq. 3.5: a sum of ``m`` terms or a dot product of
length ``m`` in any order, FMA or not, errs by at most :math:`γ_m` times the sum of the magnitudes)
and :math:`e = γ_{β+2}(u) + 2γ_{\lceil D/β \rceil}(w)` (float32 blocks, +2 for rounding inputs that are
not float32 to float32, then the float64 sum of the blocks), every entry obeys
:math:`|\tilde d - d_{64}| \le E`:

- expanded, :math:`S = \sum_k |a_k b_k| \le \lVert a\rVert\lVert b\rVert` (Cauchy-Schwarz; for
  non-negative rows such as ReLU features :math:`S = \langle a, b\rangle \le (\tilde g + t)/(1 - e)`),

  .. math:: E = (1 + 2^{-20})\big[2(e + γ_D(w))\,S + 2t + 8w\,(n_a + n_b + 2\lVert a\rVert\lVert b\rVert)\big]

  (the float32 dot and the float64 one each against the exact :math:`\langle a, b\rangle`; the two
  float64 roundings of each of :math:`\tilde d` and :math:`d_{64}` and of the interval's ends);
- direct, all terms non-negative, so relative: :math:`|\tilde d - d| \le e\,d + t`,
  :math:`|d_{64} - d| \le γ_{D+2}(w)\,d`, hence

  .. math:: E = (1 + 2^{-20})\big[(e + γ_{D+2}(w))(\tilde d + t)/(1 - e) + t\big]

with :math:`t = 2^{-149}(D + [\text{converted}]\sqrt D(\lVert a\rVert + \lVert b\rVert))` for gradual
underflow. The :math:`1 + 2^{-20}` absorbs the rounding of ``E`` itself and of the norms (valid for
:math:`D < 2^{31}`). Blocking is what makes the bound useful: :math:`γ_{β}` with β = 256 is about
:math:`1.5\cdot 10^{-5}`, where the whole-row :math:`γ_D` of one float32 GEMM over ``D = 512·7·7`` would
be :math:`1.5\cdot 10^{-3}`. A non-finite estimate (overflow, NaN) makes its row exact.

Within a row, the interval :math:`[\tilde d - E, \tilde d + E]` of every entry holds its
:math:`d_{64}`. :func:`ordered_squared_distances` recomputes :math:`d_{64}` for every entry whose
interval meets another's (within :math:`E_j + E_k`, twice the bound): any two entries then compare
(``<``, ``==``) as their :math:`d_{64}` do, so argmin, masked argmin and stable sorts of a row (ties to the
lowest index) are those of the float64 distances. Against the BLAS product inside
``squared_distances`` (whose bits depend on the matrix shapes and the position of the entry: measured
in the tests) the order is the same wherever two float64 distances differ by more than their own
rounding, :math:`2γ_D(w)\lVert a\rVert\lVert b\rVert`; exactly tied pairs (duplicated rows, integer
features) are equal here, which ``squared_distances`` does not always give. Memory: the float32 inputs,
a few ``[n, V]`` float64 arrays and :data:`PAIR_BYTES` for the recomputed pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["K_BLOCK", "PAIR_BYTES", "direct_estimates", "direct_squared_distances", "exact_squared_distances",
           "expanded_estimates", "nearest_rows", "ordered_distances", "ordered_squared_distances", "overlapping"]

K_BLOCK = 256  #: features per float32 block; the blocks' dots are added in float64
PAIR_BYTES = 1 << 25  #: float64 bytes of gathered rows per batch of recomputed pairs
_U32, _U64, _TINY = 2.0 ** -24, 2.0 ** -53, 2.0 ** -149
_MARGIN = 1.0 + 2.0 ** -20
_EXACT32 = (np.float32, np.float16)  # dtypes float32 holds exactly


def _gamma(m: int, u: float) -> float:
    return m * u / (1.0 - m * u)


def _flat(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x.reshape(len(x), -1)


def _as32(x: np.ndarray) -> tuple[np.ndarray, bool]:
    """``x`` as C-contiguous float32 and whether that was exact (float32 or float16 input)."""
    exact = x.dtype.type in _EXACT32
    return np.ascontiguousarray(x, dtype=np.float32), exact


def _dot_error(d: int, k_block: int) -> float:
    """``e`` of the module docstring for ``d`` features."""
    beta = max(1, min(d, k_block))
    return _gamma(beta + 2, _U32) + 2 * _gamma(max(1, -(-d // beta)), _U64)


def _norms(x: np.ndarray, rows: int = 256) -> np.ndarray:
    """``(x64 ** 2).sum(1)`` in blocks of rows (per row the same bits as on the whole array)."""
    out = np.empty(len(x))
    for lo in range(0, len(x), rows):
        out[lo: lo + rows] = (x[lo: lo + rows].astype(np.float64) ** 2).sum(1)
    return out


def _blocked_dots(a32: np.ndarray, b32: np.ndarray, k_block: int) -> np.ndarray:
    """:math:`\\tilde g` ``[n, V]``: float32 GEMMs over blocks of ``k_block`` features, added in float64."""
    d = a32.shape[1]
    if d <= k_block:
        return (a32 @ b32.T).astype(np.float64)
    out = np.zeros((len(a32), len(b32)))
    for k0 in range(0, d, k_block):
        out += a32[:, k0: k0 + k_block] @ b32[:, k0: k0 + k_block].T
    return out


def expanded_estimates(a: np.ndarray, b: np.ndarray, k_block: int = K_BLOCK
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:math:`\\tilde d` and :math:`E` ``[n, V]`` of the expanded formula (module docstring), with the
    float64 squared norms ``n_a`` ``[n]`` and ``n_b`` ``[V]`` they share with :math:`d_{64}`.
    Non-finite estimates get ``E = inf``."""
    a, b = _flat(a), _flat(b)
    d = a.shape[1]
    a32, exact_a = _as32(a)
    b32, exact_b = _as32(b)
    na, nb = _norms(a), _norms(b)
    with np.errstate(over="ignore", invalid="ignore"):  # float32 overflow: a non-finite estimate, its row exact
        g = _blocked_dots(a32, b32, k_block)
        est = (na[:, None] - 2 * g) + nb[None, :]
    e = _dot_error(d, k_block)
    ra, rb = np.sqrt(na), np.sqrt(nb)
    cauchy = ra[:, None] * rb[None, :]
    tiny = _TINY * (d + (0.0 if exact_a and exact_b else math.sqrt(d)) * (ra[:, None] + rb[None, :]))
    s = cauchy
    if a.size and b.size and a.min() >= 0 and b.min() >= 0:
        s = np.minimum(cauchy, (g + tiny) / (1 - e))  # S = <a, b> for non-negative rows
    err = _MARGIN * (2 * (e + _gamma(d, _U64)) * s + 2 * tiny
                     + 8 * _U64 * (na[:, None] + nb[None, :] + 2 * cauchy))
    err[~(np.isfinite(est) & np.isfinite(err))] = np.inf
    return est, err, na, nb


def _exact_pairs(a: np.ndarray, b: np.ndarray, na: np.ndarray, nb: np.ndarray, rows: np.ndarray,
                 cols: np.ndarray) -> np.ndarray:
    """:math:`d_{64}` of the pairs ``(a[rows[p]], b[cols[p]])``, a run of equal ``rows`` at a time (row-major
    pairs, as ``np.nonzero`` gives them, convert each row once), at most :data:`PAIR_BYTES` of products
    at once."""
    out = np.empty(len(rows))
    step = max(1, PAIR_BYTES // (8 * max(1, a.shape[1])))
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else np.zeros(0, np.int64)
    for s, e in zip(starts, [*starts[1:], len(rows)][: len(starts)], strict=True):
        i = rows[s]
        ai = a[i].astype(np.float64)
        for lo in range(s, e, step):
            c = cols[lo: min(e, lo + step)]
            prod = b[c].astype(np.float64)
            prod *= ai
            out[lo: lo + len(c)] = (na[i] - 2 * prod.sum(1)) + nb[c]
    return out


def exact_squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:math:`d_{64}` ``[n, V]`` of every pair, the expanded reference (module docstring); pair by pair,
    so the slow, exact baseline of :func:`ordered_squared_distances`."""
    a, b = _flat(a), _flat(b)
    rows, cols = np.divmod(np.arange(len(a) * len(b)), max(1, len(b)))
    return _exact_pairs(a, b, _norms(a), _norms(b), rows, cols).reshape(len(a), len(b))


def overlapping(est: np.ndarray, err: np.ndarray) -> np.ndarray:
    """Boolean ``[n, V]``: the interval ``[est - err, est + err]`` of the entry meets that of another entry
    of its row. Sorted by lower ends, an entry meets a later one iff it meets the next, and an earlier
    one iff the largest upper end before it reaches its lower end."""
    with np.errstate(invalid="ignore"):
        lower, upper = est - err, est + err
    lower[~np.isfinite(err)], upper[~np.isfinite(err)] = -np.inf, np.inf
    order = np.argsort(lower, axis=1, kind="stable")
    lo, hi = np.take_along_axis(lower, order, 1), np.take_along_axis(upper, order, 1)
    hit = np.zeros(lo.shape, dtype=bool)
    hit[:, 1:] = np.maximum.accumulate(hi, axis=1)[:, :-1] >= lo[:, 1:]
    hit[:, :-1] |= hi[:, :-1] >= lo[:, 1:]
    out = np.empty_like(hit)
    np.put_along_axis(out, order, hit, 1)
    return out


def ordered_distances(a: np.ndarray, b: np.ndarray, k_block: int = K_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """:func:`ordered_squared_distances` and the boolean ``[n, V]`` of the entries recomputed in float64."""
    a, b = _flat(a), _flat(b)
    est, err, na, nb = expanded_estimates(a, b, k_block)
    exact = overlapping(est, err)
    exact[~np.isfinite(err).all(1)] = True  # a row with an overflow or a NaN: all of it exact
    rows, cols = np.nonzero(exact)
    est[rows, cols] = _exact_pairs(a, b, na, nb, rows, cols)
    return est, exact


def ordered_squared_distances(a: np.ndarray, b: np.ndarray, k_block: int = K_BLOCK) -> np.ndarray:
    """Squared distances ``[len(a), len(b)]`` of flattened rows, float64, that order every row as the
    float64 distances :math:`d_{64}` do (module docstring): each entry is the float32 estimate where
    its interval meets no other of its row, else :math:`d_{64}` itself. For comparisons within a row
    (argmin, masked argmin, sorting); the values are within ``E`` of :math:`d_{64}`."""
    return ordered_distances(a, b, k_block)[0]


# the direct formula: neighbours of one row -----------------------------------------------------------
def direct_squared_distances(f: np.ndarray, x: np.ndarray) -> np.ndarray:
    """:math:`d_{64}` ``[n]``, ``((f64 - x64) ** 2).sum(1)``, of flattened rows ``f`` to the vector ``x``."""
    return ((_flat(f).astype(np.float64) - np.asarray(x, dtype=np.float64).ravel()) ** 2).sum(1)


def direct_estimates(f: np.ndarray, x32: np.ndarray, k_block: int = K_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """:math:`\\tilde d` and :math:`E` ``[n]`` of the direct formula for float32 (or float16) rows ``f``
    and a float32 vector ``x32`` (module docstring); ``E = inf`` where the estimate is not finite."""
    f = _flat(f)
    d = f.shape[1]
    est = np.zeros(len(f))
    with np.errstate(over="ignore", invalid="ignore"):  # non-finite estimates: recomputed in float64
        for k0 in range(0, max(d, 1), k_block):
            diff = f[:, k0: k0 + k_block].astype(np.float32) - x32[k0: k0 + k_block]
            est += (diff * diff).sum(1)
    e, tiny = _dot_error(d, k_block), _TINY * d
    err = _MARGIN * ((e + _gamma(d + 2, _U64)) * (est + tiny) / (1 - e) + tiny)
    err[~np.isfinite(est)] = np.inf
    return est, err


def nearest_rows(read: Callable[[int, int], np.ndarray], n: int, x: int, top: int, block: int,
                 k_block: int = K_BLOCK) -> np.ndarray:
    """The ``top`` rows of the ``n`` that ``read(lo, hi)`` gives ``block`` at a time nearest to row ``x``
    by :math:`d_{64}` (direct), ``x`` itself last (``inf``), ties to the lowest index: exactly
    ``np.argsort(d64, kind="stable")[:top]``.

    One pass of float32 estimates (:func:`direct_estimates`; float64 rows that float32 does not hold
    exactly are :math:`d_{64}` at once). With :math:`T` the ``top``-th smallest upper end
    :math:`\\tilde d + E` of the other rows, a row whose lower end :math:`\\tilde d - E` exceeds :math:`T`
    has ``top`` rows strictly nearer: only the others (the candidates) get :math:`d_{64}`, read again
    block by block, and are sorted. Memory: one block and ``[n]`` floats."""
    x = range(n)[x]
    xrow = _flat(read(x, x + 1))
    x64 = xrow.astype(np.float64).ravel()
    fast = xrow.dtype.type in _EXACT32
    est, err = np.empty(n), np.empty(n)
    for lo in range(0, n, block):
        f = _flat(read(lo, lo + block))
        if fast and f.dtype.type in _EXACT32:
            est[lo: lo + len(f)], err[lo: lo + len(f)] = direct_estimates(f, xrow.astype(np.float32).ravel(), k_block)
        else:
            est[lo: lo + len(f)], err[lo: lo + len(f)] = direct_squared_distances(f, x64), 0.0
    finite = np.isfinite(err) & np.isfinite(est)
    with np.errstate(invalid="ignore"):
        lower, upper = np.where(finite, est - err, -np.inf), np.where(finite, est + err, np.inf)
    others = np.ones(n, dtype=bool)
    others[x] = False
    candidate = others.copy()
    if 0 < top < n - 1:
        threshold = np.partition(upper[others], top - 1)[top - 1]
        candidate &= lower <= threshold
    need = np.flatnonzero(candidate & (err > 0))
    for lo in range(0, n, block):
        rows = need[(need >= lo) & (need < lo + block)]
        if len(rows):
            f = _flat(read(int(rows[0]), int(rows[-1]) + 1))
            est[rows] = direct_squared_distances(f[rows - rows[0]], x64)
    est[x] = np.inf
    idx = np.flatnonzero(candidate | ~others)
    return idx[np.argsort(est[idx], kind="stable")][:top]
