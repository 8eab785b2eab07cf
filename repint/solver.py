r"""The greedy solver of Algorithm 1 (Wolsey's greedy for submodular-cost submodular cover).

For an input ``x`` with sign row ``s(x)`` over the sampled boundaries ``Q``, ``P ⊆ Q`` covers ``x'``
when ``s_h(x') = s_h(x)`` for every ``h ∈ P``. With ``R`` the reference set and ``D = D(x)`` its
images of another predicted class,

.. math::

    \tau(x) = |\{x' \in D : s_h(x') = s_h(x)\ \forall h \in Q\}|, \qquad \delta = \tau(x)

and, starting from ``P = ∅``, while ``|P ∩ D| > δ`` add the ``h ∉ P`` minimising

.. math:: \frac{|P \cap R| - |(P + h) \cap R|}{|P \cap D| - |(P + h) \cap D|}

among candidates with a positive denominator. Ties: smallest ratio, then largest denominator, then
lowest index. Counts are popcounts over bits packed along the image axis, and only the words where
``P ∩ R`` is still non-empty are touched, so a step costs ``O(|Q| · |P ∩ R| / 64)``.

Ratios are compared as float64: distinct ratios of integers ``≤ N`` differ by at least ``1/N²``
relatively, far above float64 rounding for any ``N < 10⁷``, so the order is exact.

The solvers are registered by name (``interpretation.solver``, :func:`solvers`; the first is the
default): ``greedy`` is Algorithm 1 as above (the paper), ``authors`` the authors' code
(:func:`authors_polytope`, method.md "The authors' code, in more detail").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from repint.registry import Registry

__all__ = ["AUTHORS_TOLERANCE", "SOLVERS", "InfeasibleError", "Polytope", "Solver", "authors_polytope",
           "forgiving_bound", "get_solver", "greedy_polytope", "greedy_polytope_dense", "register_solver", "solvers"]

#: ``solver(signs [N, Q] bool, input_index, other_class [N] bool) -> Polytope``
Solver = Callable[[np.ndarray, int, np.ndarray], "Polytope"]
SOLVERS: Registry[Solver] = Registry("solver")
register_solver = SOLVERS.register  #: decorator adding a solver under a name
solvers = SOLVERS.names  #: the registered solvers (the first, ``greedy``, is the default)
get_solver = SOLVERS.get


class InfeasibleError(ValueError):
    """``δ < τ(x)``: no subset of ``Q`` can exclude enough images of other classes."""


@dataclass(frozen=True)
class Polytope:
    """The solution for one input: boundaries in the order chosen and what they cover."""

    input_index: int
    boundaries: np.ndarray
    orientation: np.ndarray
    covered: np.ndarray
    tau: int
    delta: int
    n_other_covered: int

    @property
    def n_covered(self) -> int:
        """Representativeness ``|P ∩ R|``."""
        return int(self.covered.sum())

    @property
    def purity(self) -> float:
        """``|P ∩ R \\ D| / |P ∩ R|``."""
        n = self.n_covered
        return (n - self.n_other_covered) / n if n else 0.0


def _validate(signs: np.ndarray, input_index: int, other_class: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    signs = np.asarray(signs)
    other = np.asarray(other_class)
    if signs.ndim != 2 or signs.dtype != bool:
        raise ValueError(f"signs must be a boolean N x Q matrix, got dtype {signs.dtype} and shape {signs.shape}.")
    if other.shape != (signs.shape[0],) or other.dtype != bool:
        raise ValueError(f"other_class must be a boolean vector of length N = {signs.shape[0]}, "
                         f"got dtype {other.dtype} and shape {other.shape}.")
    if not 0 <= input_index < signs.shape[0]:
        raise ValueError(f"input_index {input_index} is outside the {signs.shape[0]} reference images.")
    if other[input_index]:
        raise ValueError(f"Image {input_index} is marked as of another class than itself (other_class[input_index]).")
    return signs, other


_PACK_BLOCK = 65_536  # images per block of the transpose: a multiple of 64, [block, Q] bools fit in cache


def _pack_images(mask: np.ndarray) -> np.ndarray:
    """Pack a boolean ``[N, Q]`` (or ``[N]``) along the image axis into ``uint64`` ``[Q, ceil(N/64)]``."""
    m = mask if mask.ndim == 2 else mask[:, None]
    n, q = m.shape
    n_words = -(-n // 64)
    out = np.zeros((q, n_words * 8), dtype=np.uint8)
    # packbits along a contiguous last axis is ~8x faster than along a transposed view, and a
    # transpose of the whole [N, Q] is cache-hostile (1.4 s at N = 1,000,000, Q = 50): transpose and
    # pack blocks of images that fit in cache (56 ms, the same bits)
    for lo in range(0, n, _PACK_BLOCK):
        hi = min(lo + _PACK_BLOCK, n)
        out[:, lo // 8: (hi + 7) // 8] = np.packbits(np.ascontiguousarray(m[lo:hi].T), axis=1, bitorder="little")
    return out.view("<u8")


def _unpack_images(words: np.ndarray, n: int) -> np.ndarray:
    return np.unpackbits(words.view(np.uint8), count=n, bitorder="little").astype(bool)


def _popcount(words: np.ndarray) -> np.ndarray:
    return np.bitwise_count(words).sum(axis=-1, dtype=np.int64)


def _packed(signs: np.ndarray, input_index: int, other: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``A`` ``[Q, W]`` (images on x's side of each ``h``), ``D`` and ``R`` ``[W]`` packed, and ``τ``."""
    agree = signs == signs[input_index]
    A = _pack_images(agree)
    Dw = _pack_images(other)[0]
    Rw = _pack_images(np.ones(len(signs), dtype=bool))[0]
    inside = np.bitwise_and.reduce(A, axis=0) if signs.shape[1] else Rw.copy()
    return A, Dw, Rw, int(_popcount(inside & Dw))


def _greedy_path(A: np.ndarray, Dw: np.ndarray, Rw: np.ndarray, allowed: Callable[[int, int], int]
                 ) -> tuple[list[int], np.ndarray, int]:
    """Algorithm 1's loop on packed bits while ``|P ∩ D| > allowed(|P ∩ R|, |P ∩ D|)``. Returns the
    boundaries in the order chosen, ``P ∩ R`` packed and ``|P ∩ D|``. ``allowed >= τ`` keeps a
    candidate with a positive denominator while the loop runs."""
    cur, n_r, n_d = Rw, int(_popcount(Rw)), int(_popcount(Dw))
    active = np.flatnonzero(cur)
    candidates = np.arange(len(A))
    chosen: list[int] = []
    while n_d > allowed(n_r, n_d):
        cur_a, d_a = cur[active], Dw[active]
        sub = A[np.ix_(candidates, active)] & cur_a
        new_r = _popcount(sub)
        new_d = _popcount(sub & d_a)
        den = n_d - new_d
        keep = den > 0          # a zero denominator stays zero as P grows: drop it for good
        candidates, new_r, new_d, den = candidates[keep], new_r[keep], new_d[keep], den[keep]
        ratio = (n_r - new_r) / den
        best = np.lexsort((candidates, -den, ratio))[0]
        h = int(candidates[best])
        chosen.append(h)
        cur = cur.copy()
        cur[active] = cur_a & A[h, active]
        n_r, n_d = int(new_r[best]), int(new_d[best])
        candidates = np.delete(candidates, best)
        active = active[cur[active] != 0]
    return chosen, cur, n_d


def _polytope(signs: np.ndarray, input_index: int, chosen: list[int], cur: np.ndarray, tau: int, delta: int,
              n_d: int) -> Polytope:
    idx = np.asarray(chosen, dtype=np.int64)
    return Polytope(input_index=int(input_index), boundaries=idx, orientation=signs[input_index, idx].copy(),
                    covered=_unpack_images(cur, len(signs)), tau=tau, delta=delta, n_other_covered=n_d)


@register_solver("greedy")
def greedy_polytope(signs: np.ndarray, input_index: int, other_class: np.ndarray,
                    delta: int | None = None) -> Polytope:
    """Algorithm 1 on a boolean ``N x Q`` sign matrix; ``other_class`` marks ``D(x)``.

    Returns a :class:`Polytope` with ``.boundaries`` (column indices in the order chosen),
    ``.covered`` (boolean ``N``), ``.tau``. Raises :class:`InfeasibleError` when ``delta < tau``.
    """
    signs, other = _validate(signs, input_index, other_class)
    A, Dw, Rw, tau = _packed(signs, input_index, other)
    delta = tau if delta is None else int(delta)
    if delta < tau:
        raise InfeasibleError(
            f"delta = {delta} < tau = {tau}: even all {signs.shape[1]} boundaries leave {tau} images of another "
            f"class on the side of input {input_index}. Use delta >= tau (the default), or sample more boundaries.")
    chosen, cur, n_d = _greedy_path(A, Dw, Rw, lambda n_r, n_d: delta)
    return _polytope(signs, input_index, chosen, cur, tau, delta, n_d)


#: the authors' "forgiving" constraint: other-class coverage allowed up to this share of the covered
#: same-class images (1%, ``SubmodularMinerAG.mineInvariant_peter``); exact integer arithmetic
AUTHORS_TOLERANCE = Fraction(1, 100)


def forgiving_bound(n_covered: int, n_other_covered: int, tau: int, tolerance: Fraction = AUTHORS_TOLERANCE) -> int:
    r"""The authors' constraint as a bound on ``|P ∩ D|``:
    :math:`\max(\tau, \lfloor t \cdot |P \cap R \setminus D| \rfloor)`, ``t = tolerance``, with
    ``|P ∩ R ∖ D| = n_covered - n_other_covered``. ``τ`` stays a floor: the constraint is never
    stricter than the paper's ``δ = τ``, so it can always be met (all of ``Q`` meets ``δ = τ``)."""
    same = n_covered - n_other_covered
    return max(int(tau), same * tolerance.numerator // tolerance.denominator)


@register_solver("authors")
def authors_polytope(signs: np.ndarray, input_index: int, other_class: np.ndarray,
                     tolerance: Fraction = AUTHORS_TOLERANCE) -> Polytope:
    r"""The authors' solver (method.md, "The authors' code, in more detail"): Algorithm 1's greedy under
    their forgiving constraint, then a backward-elimination pass.

    1. Greedy, the same picks and ties as :func:`greedy_polytope`, while
       :math:`|P \cap D| > \max(\tau, \lfloor t \cdot |P \cap R \setminus D| \rfloor)` (:func:`forgiving_bound`,
       ``t = 1/100``, re-evaluated after every pick since ``|P ∩ R ∖ D|`` shrinks as ``P`` grows). Its
       picks are a prefix of :func:`greedy_polytope`'s (a pick depends on ``P``, not on the stop).
    2. Backward elimination over the picks, *last selected first* (reverse delete): drop ``h`` when
       ``P ∖ {h}`` still meets the same constraint (with its own, larger, coverage). The last pick is
       never dropped: without it ``P`` is where the greedy had not yet met the constraint.

    Decisions (the authors' code itself was not at hand): one greedy pass, where their code runs up to
    five; ``τ`` is kept as a floor of the bound (see :func:`forgiving_bound`), so this never raises
    :class:`InfeasibleError`; the returned ``.delta`` is the bound of the final ``P``, and
    ``.boundaries`` keep the order chosen.
    """
    signs, other = _validate(signs, input_index, other_class)
    A, Dw, Rw, tau = _packed(signs, input_index, other)

    def allowed(n_r: int, n_d: int) -> int:
        return forgiving_bound(n_r, n_d, tau, tolerance)

    chosen, cur, n_d = _greedy_path(A, Dw, Rw, allowed)
    kept = list(chosen)
    for h in reversed(chosen[:-1]):  # the last pick is needed (docstring)
        rest = [g for g in kept if g != h]
        trial = np.bitwise_and.reduce(A[rest], axis=0) if rest else Rw
        t_r, t_d = int(_popcount(trial)), int(_popcount(trial & Dw))
        if t_d <= allowed(t_r, t_d):
            kept, cur, n_d = rest, trial, t_d
    return _polytope(signs, input_index, kept, cur, tau, allowed(int(_popcount(cur)), n_d), n_d)


def greedy_polytope_dense(signs: np.ndarray, input_index: int, other_class: np.ndarray,
                          delta: int | None = None) -> Polytope:
    """A straightforward boolean-matrix numpy version of Algorithm 1, the reference for tests and
    benchmarks. Same result as :func:`greedy_polytope`, much slower."""
    signs, other = _validate(signs, input_index, other_class)
    n, q = signs.shape
    agree = signs == signs[input_index]
    tau = int((agree.all(axis=1) & other).sum())
    delta = tau if delta is None else int(delta)
    if delta < tau:
        raise InfeasibleError(f"delta = {delta} < tau = {tau}")
    cur = np.ones(n, dtype=bool)
    chosen: list[int] = []
    while (cur & other).sum() > delta:
        best: tuple[float, int, int] | None = None
        for h in range(q):
            if h in chosen:
                continue
            new = cur & agree[:, h]
            num = int(cur.sum() - new.sum())
            den = int((cur & other).sum() - (new & other).sum())
            if den <= 0:
                continue
            key = (num / den, -den, h)
            if best is None or key < best:
                best = key
        assert best is not None
        chosen.append(best[2])
        cur &= agree[:, best[2]]
    idx = np.asarray(chosen, dtype=np.int64)
    return Polytope(input_index=int(input_index), boundaries=idx, orientation=signs[input_index, idx].copy(),
                    covered=cur, tau=tau, delta=delta, n_other_covered=int((cur & other).sum()))
