r"""Which interpretation an unseen image gets: the reuse of interpretations on unseen images.

For an unseen image ``e`` with features ``ψ(e)``, sign bits ``s(e)`` over the boundaries and predicted
class ``Class(e)``, and centres ``c_v`` of the interpretations ``V`` with polytopes
``P_v = {(h, o_{v,h})}`` (boundary ids and the input's side of each) and predicted classes
``Class(v)``:

.. math::

    d(e, v) = \lVert ψ(e) - c_v \rVert^2, \qquad
    \mathrm{nearest}(e) = \arg\min_v d(e, v)

    \mathrm{cover}(e, v) = \Big[\bigwedge_{(h, o) \in P_v} s_h(e) = o\Big]
                          \wedge \big[\mathrm{Class}(e) = \mathrm{Class}(v)\big]

    \mathrm{RI}(e) = \begin{cases} \arg\min_{v : \mathrm{cover}(e, v)} d(e, v) & \exists v : \mathrm{cover}(e, v) \\
                     \mathrm{nearest}(e) & \text{otherwise (the fallback)} \end{cases}

RI's methods reuse the interpretation ``RI(e)``; the baselines reuse ``nearest(e)``. Ties of ``argmin``
go to the lowest centre index. ``d(e, v)`` is the float64 formula of :func:`repint.centres.squared_distances`
as :func:`repint.distances.ordered_squared_distances` computes it: in float32, recomputed in float64
exactly where two centres of a row are too close to tell apart, so that every ``argmin`` below is that of
the float64 distances (rules only compare the distances of one image). An empty polytope covers every
image of its centre's class.

What an image no polytope covers gets is a *fallback rule*, registered by name like the methods
(``evaluation.fallback``): ``nearest`` (the rule above: the paper's and the authors' code),
``nearest-same-class``, :math:`\arg\min_{v : \mathrm{Class}(v) = \mathrm{Class}(e)} d(e, v)` (the nearest
centre whose input has the image's predicted class; ``nearest`` where no centre has it), or
``least-violated``, the polytope of the image's class whose boundaries it violates least,

.. math::

    \mathrm{viol}(e, v) = |\{(h, o) \in P_v : s_h(e) \ne o\}|, \qquad
    \arg\min_{v : \mathrm{Class}(v) = \mathrm{Class}(e)} \big(\mathrm{viol}(e, v), d(e, v), v\big)

(lexicographic: fewest violated boundaries, then the nearest centre, then the lowest index;
``nearest`` where no centre has the image's class). ``cover(e, v)`` is ``viol(e, v) = 0`` and the class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from repint.distances import ordered_squared_distances
from repint.registry import Registry

__all__ = ["FALLBACKS", "Assignment", "FallbackRule", "assign", "assign_by_distances", "fallback_centres", "fallbacks",
           "polytope_cover", "polytope_violations", "register_fallback"]

#: ``rule(dist [n, V], predictions [n], centre_class [V], violations [n, V]) -> [n]`` centre of each
#: image (``violations``: :func:`polytope_violations`); ``dist`` orders each row as the float64 distances
#: do, its values within the bound of :mod:`repint.distances`: a rule compares the entries of a row only
FallbackRule = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
FALLBACKS: Registry[FallbackRule] = Registry("fallback rule")
register_fallback = FALLBACKS.register  #: decorator adding a fallback rule under a name
fallbacks = FALLBACKS.names  #: the registered rules (the first is the default)


@register_fallback("nearest")
def _nearest(dist: np.ndarray, predictions: np.ndarray, centre_class: np.ndarray,
             violations: np.ndarray) -> np.ndarray:
    return np.argmin(dist, axis=1)


@register_fallback("nearest-same-class")
def _nearest_same_class(dist: np.ndarray, predictions: np.ndarray, centre_class: np.ndarray,
                        violations: np.ndarray) -> np.ndarray:
    same = predictions[:, None] == centre_class[None, :]
    return np.where(same.any(1), np.argmin(np.where(same, dist, np.inf), axis=1), np.argmin(dist, axis=1))


@register_fallback("least-violated")
def _least_violated(dist: np.ndarray, predictions: np.ndarray, centre_class: np.ndarray,
                    violations: np.ndarray) -> np.ndarray:
    same = predictions[:, None] == centre_class[None, :]
    viol = np.where(same, np.asarray(violations, dtype=np.int64), np.iinfo(np.int64).max)
    fewest = same & (viol == viol.min(axis=1, keepdims=True))
    return np.where(same.any(1), np.argmin(np.where(fewest, dist, np.inf), axis=1), np.argmin(dist, axis=1))


def fallback_centres(dist: np.ndarray, predictions: np.ndarray, centre_class: np.ndarray, violations: np.ndarray,
                     rule_name: str) -> np.ndarray:
    """The centre ``[n]`` the fallback rule ``rule_name`` (:func:`fallbacks`) gives each image, from
    ``dist`` ``[n, V]``, ``predictions`` ``[n]``, ``centre_class`` ``[V]`` and ``violations`` ``[n, V]``."""
    return FALLBACKS.get(rule_name)(np.asarray(dist), np.asarray(predictions), np.asarray(centre_class),
                                    np.asarray(violations))


@dataclass(frozen=True)
class Assignment:
    """``nearest`` ``[n]`` (nearest centre), ``ri_centre`` ``[n]`` (RI's centre), ``ri_covered`` ``[n]``
    (some polytope of the image's class covers it: ``ri_centre`` is not the fallback), ``cover``
    ``[n, V]`` (``cover(e, v)`` of the module docstring, class included) and ``fallback_centre``
    ``[n, R]`` (column ``r``: the centre the ``r``-th registered rule of :func:`fallbacks` gives, so
    that variants with another fallback reuse one assignment)."""

    nearest: np.ndarray
    ri_centre: np.ndarray
    ri_covered: np.ndarray
    cover: np.ndarray
    fallback_centre: np.ndarray


def polytope_violations(signs: np.ndarray, polytope_boundaries: np.ndarray,
                        polytope_orientation: np.ndarray) -> np.ndarray:
    r"""Integer ``[n, V]``: how many boundaries of polytope ``v`` image ``e`` is on the wrong side of,
    :math:`\mathrm{viol}(e, v) = \sum_k [s_{b_{v,k}}(e) \ne o_{v,k}]` over the entries ``b_{v,k} >= 0``.

    ``signs`` ``[n, M]`` are the unpacked sign bits over all ``M`` boundaries; ``polytope_boundaries``
    ``[V, K]`` are boundary ids padded with ``-1`` and ``polytope_orientation`` ``[V, K]`` the sides.
    """
    signs = np.asarray(signs)
    ids, orient = np.asarray(polytope_boundaries), np.asarray(polytope_orientation)
    if signs.ndim != 2:
        raise ValueError(f"signs must be an n x M matrix of sign bits, got shape {signs.shape}.")
    if ids.ndim != 2 or orient.shape != ids.shape:
        raise ValueError(f"polytope_boundaries {ids.shape} and polytope_orientation {orient.shape} must be the "
                         "same V x K shape.")
    viol = np.zeros((len(signs), len(ids)), dtype=np.int32)
    for v in range(len(ids)):  # the gather dominates: as cheap as the cover's .all() (~10% more)
        k = ids[v] >= 0
        viol[:, v] = (signs[:, ids[v][k]] != orient[v][k]).sum(axis=1, dtype=np.int32)
    return viol


def polytope_cover(signs: np.ndarray, polytope_boundaries: np.ndarray,
                   polytope_orientation: np.ndarray) -> np.ndarray:
    r"""Boolean ``[n, V]``: image ``e`` lies in polytope ``v``,
    :math:`\bigwedge_k s_{b_{v,k}}(e) = o_{v,k}`, i.e. :func:`polytope_violations` ``== 0``."""
    return polytope_violations(signs, polytope_boundaries, polytope_orientation) == 0


def assign(features: np.ndarray, centres: np.ndarray, signs: np.ndarray, polytope_boundaries: np.ndarray,
           polytope_orientation: np.ndarray, predictions: np.ndarray, centre_class: np.ndarray,
           fallback: str = "nearest") -> Assignment:
    """Assign each of ``n`` unseen images to an interpretation by the rule of the module docstring.

    ``features`` ``[n, ...]`` and ``centres`` ``[V, ...]`` (flattened; distances by
    :func:`repint.distances.ordered_squared_distances`), ``signs`` ``[n, M]`` boolean,
    ``polytope_boundaries`` / ``polytope_orientation`` ``[V, K]`` (ids padded with ``-1``), ``predictions``
    ``[n]`` and ``centre_class`` ``[V]`` predicted classes; ``fallback`` names the rule (:func:`fallbacks`)
    for images no polytope covers. Each image's result depends on its own row only: assigning a set
    chunk by chunk gives the same arrays.
    """
    FALLBACKS.get(fallback)  # an unknown rule is an error before any work
    predictions, centre_class = np.asarray(predictions), np.asarray(centre_class)
    if len(features) != len(signs) or predictions.shape != (len(features),):
        raise ValueError(f"features ({len(features)}), signs ({len(signs)}) and predictions {predictions.shape} "
                         "must have one row per unseen image.")
    if centre_class.shape != (len(centres),) or len(polytope_boundaries) != len(centres):
        raise ValueError(f"centres ({len(centres)}), centre_class {centre_class.shape} and polytope_boundaries "
                         f"({len(polytope_boundaries)}) must have one row per centre.")
    return assign_by_distances(ordered_squared_distances(features, centres), signs, polytope_boundaries,
                               polytope_orientation, predictions, centre_class, fallback)


def assign_by_distances(dist: np.ndarray, signs: np.ndarray, polytope_boundaries: np.ndarray,
                        polytope_orientation: np.ndarray, predictions: np.ndarray, centre_class: np.ndarray,
                        fallback: str = "nearest") -> Assignment:
    """:func:`assign` from the distances ``dist`` ``[n, V]`` (``d(e, v)``): the rule compares the entries
    of a row only, so any matrix that orders each row alike gives the same assignment
    (:func:`repint.centres.squared_distances`'s, :func:`repint.distances.ordered_squared_distances`')."""
    FALLBACKS.get(fallback)
    dist, predictions, centre_class = np.asarray(dist), np.asarray(predictions), np.asarray(centre_class)
    nearest = np.argmin(dist, axis=1)
    viol = polytope_violations(signs, polytope_boundaries, polytope_orientation)
    cov = (viol == 0) & (predictions[:, None] == centre_class)
    covered = cov.any(1)
    every = np.stack([FALLBACKS.get(r)(dist, predictions, centre_class, viol) for r in fallbacks()], axis=1)
    ri = np.where(covered, np.argmin(np.where(cov, dist, np.inf), axis=1), every[:, fallbacks().index(fallback)])
    return Assignment(nearest=nearest, ri_centre=ri, ri_covered=covered, cover=cov, fallback_centre=every)
