r"""Explain new images by the interpretations of a run: RI's reuse (Sec. 5) applied to any image.

For an image ``e`` the model gives ψ(e) and the logits ``G(ψ(e))`` (one forward pass), its
predicted class :math:`\mathrm{Class}(e) = \arg\max_c G_c(ψ(e))` and probability
:math:`\mathrm{softmax}(G(ψ(e)))_{\mathrm{Class}(e)}`; the sign bits ``s(e)`` over the run's sampled
boundaries give the interpretation it reuses exactly as the evaluation assigns unseen images
(:func:`repint.assignment.assign`: the covering polytope of its class, else the fallback rule; the
baselines reuse the nearest centre's), and the method's reused interpretation gives its heat map.
The boundaries of the interpretation's polytope that ``e`` violates,

.. math:: \{h : (h, o) \in P_v,\ s_h(e) \ne o\},

are empty exactly where ``P_v`` covers ``e``. The similar reference images of ``e`` are the
reference images ``P_v`` covers ranked by Eq. 6 (:func:`repint.ranking.semantic_distance`).

:class:`Explanation` holds the arrays; the store-backed loader is
:class:`repint.storage.interpretations.Interpretations` (``from repint import Interpretations``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from repint.assignment import assign
from repint.metrics import softmax

__all__ = ["Assigned", "Explanation", "assign_images", "violated_boundaries"]


@dataclass(frozen=True)
class Assigned:
    """The assignment part of an explanation: ``predicted_class`` and ``probability`` ``[n]``,
    ``interpretation`` ``[n]`` (the centre whose interpretation is reused), ``covered`` ``[n]``
    (``P_interpretation`` covers the image and has its class), ``ri_covered`` ``[n]`` (some polytope
    of its class covers it: RI's coverage, what the evaluation's tables split by) and
    ``violated_boundaries`` (per image, the ids of the interpretation's boundaries it violates)."""

    predicted_class: np.ndarray
    probability: np.ndarray
    interpretation: np.ndarray
    covered: np.ndarray
    ri_covered: np.ndarray
    violated_boundaries: list[np.ndarray]


def violated_boundaries(signs: np.ndarray, polytope_boundaries: np.ndarray, polytope_orientation: np.ndarray,
                        centre: np.ndarray) -> list[np.ndarray]:
    """Per image ``i``, the boundary ids ``h`` of polytope ``centre[i]`` with ``s_h != o`` (``signs``
    ``[n, M]`` boolean, polytopes ``[V, K]`` padded with ``-1``)."""
    out = []
    for i, v in enumerate(np.asarray(centre)):
        ids, orient = polytope_boundaries[v], polytope_orientation[v]
        k = ids >= 0
        out.append(ids[k][signs[i, ids[k]] != orient[k]].astype(np.int64))
    return out


def assign_images(features: np.ndarray, logits: np.ndarray, signs: np.ndarray, centres: np.ndarray,
                  centre_class: np.ndarray, polytope_boundaries: np.ndarray, polytope_orientation: np.ndarray,
                  fallback: str, uses_polytope: bool) -> Assigned:
    """Which interpretation each image reuses, as the evaluation assigns unseen images: methods on RI's
    polytopes the covering polytope of the image's class (the nearest centre among several), else the
    ``fallback`` rule's; the others the nearest centre. ``features`` ``[n, ...]``, ``logits``
    ``[n, C]``, ``signs`` ``[n, M]`` boolean."""
    cls = np.asarray(logits).argmax(1)
    a = assign(features, centres, signs, polytope_boundaries, polytope_orientation, cls, centre_class,
               fallback=fallback)
    centre = a.ri_centre if uses_polytope else a.nearest
    rows = np.arange(len(cls))
    # assign() already computed cover(e, v) = [viol(e, v) == 0] and [Class(e) = Class(v)]: read it instead of
    # computing polytope_violations a second time (the same booleans)
    covered = a.cover[rows, centre]
    return Assigned(predicted_class=cls, probability=softmax(np.asarray(logits))[rows, cls],
                    interpretation=centre.astype(np.int64), covered=covered, ri_covered=a.ri_covered,
                    violated_boundaries=violated_boundaries(signs, polytope_boundaries, polytope_orientation, centre))


@dataclass
class Explanation:
    """What :meth:`Interpretations.explain` gives for ``n`` images: the fields of :class:`Assigned`,
    the method's ``heatmaps`` ``[n, H, W]`` in ``[0, 1]`` (the interpretation's reused map), ``kept``
    ``[n, H, W]`` (its top ``keep_fraction`` of pixels, the evaluation's mask), the features ``ψ``
    and :meth:`similar`."""

    method: str
    assigned: Assigned
    heatmaps: np.ndarray
    kept: np.ndarray
    features: np.ndarray
    logits: np.ndarray
    ids: list[str]
    _rank: Callable[[int, np.ndarray, int], tuple[np.ndarray, np.ndarray]] = field(repr=False)
    uses_polytope: bool = True  # RI's methods; the others reuse the nearest centre's interpretation

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.assigned.interpretation):
            raise ValueError(f"{len(self.ids)} ids for {len(self.assigned.interpretation)} images: one id per image.")

    @property
    def predicted_class(self) -> np.ndarray:
        return self.assigned.predicted_class

    @property
    def probability(self) -> np.ndarray:
        return self.assigned.probability

    @property
    def interpretation(self) -> np.ndarray:
        return self.assigned.interpretation

    @property
    def covered(self) -> np.ndarray:
        return self.assigned.covered

    @property
    def ri_covered(self) -> np.ndarray:
        return self.assigned.ri_covered

    @property
    def violated_boundaries(self) -> list[np.ndarray]:
        return self.assigned.violated_boundaries

    def __len__(self) -> int:
        return len(self.interpretation)

    def similar(self, k: int = 4) -> list[list[str]]:
        """Per image, the ids of the ``k`` reference images most similar to it by Eq. 6 among those its
        interpretation's polytope covers (fewer where the polytope covers fewer)."""
        return [list(ids) for ids, _ in self.similar_indices(k)]

    def similar_indices(self, k: int = 4) -> list[tuple[list[str], np.ndarray]]:
        """Per image, the ids and reference indices of :meth:`similar`."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}.")
        out = []
        for i in range(len(self)):
            ids, idx = self._rank(int(self.interpretation[i]), self.features[i], k)
            out.append(([str(x) for x in ids], idx))
        return out

    def reuse(self, i: int) -> str:
        """How image ``i`` got its interpretation: ``covered`` (by its polytope), ``fallback`` (RI's
        methods, no polytope of its class covers it) or ``nearest`` (the others: the nearest centre)."""
        return "nearest" if not self.uses_polytope else "covered" if self.covered[i] else "fallback"

    def rows(self, k: int = 4, class_names: Sequence[str] = (),
             similar: list[tuple[list[str], np.ndarray]] | None = None) -> list[dict]:
        """One plain record per image (``explanations.json`` / CSV): id, predicted class and probability,
        interpretation, how it was reused (:meth:`reuse`), violated boundaries, similar reference ids
        (``similar``: :meth:`similar_indices` where already computed)."""
        out = []
        for i, (ids, _) in enumerate(similar if similar is not None else self.similar_indices(k)):
            c = int(self.predicted_class[i])
            out.append({"image": self.ids[i], "predicted_class": c,
                        "class_name": class_names[c] if c < len(class_names) else str(c),
                        "probability": float(self.probability[i]), "method": self.method,
                        "interpretation": int(self.interpretation[i]), "covered": bool(self.covered[i]),
                        "reuse": self.reuse(i),
                        "violated_boundaries": [int(h) for h in self.violated_boundaries[i]],
                        "similar": ids})
        return out
