"""The ways of sampling Q (``interpretation.q_sampling``), registered by name as the methods are.

A sampler gets the head ``G``, a reader of reference features by row, the reference predictions,
the reference image of each interpretation (the centres' inputs), ``|Q|`` and a generator, and
returns the boundaries with, for each, the reference image it was sampled at or walked to
(``source``) and the interpretation it belongs to (``owner``; ``-1``: shared by every input).
A new way of sampling is one decorated function here (method.md, "What the paper leaves open").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from repint.boundaries import (
    Boundaries,
    boundary_search,
    linear_boundaries,
    sample_other_class,
    sample_reference_points,
)
from repint.registry import Registry

__all__ = ["AUTHORS_START", "Q_SAMPLERS", "QSampler", "SampledQ", "get_q_sampler", "q_samplers", "register_q_sampler"]

FeatureRows = Callable[[np.ndarray], np.ndarray]  # reference row ids -> their ψ, [n, K, h, w]


@dataclass(frozen=True)
class SampledQ:
    """``Q``: the boundaries and, per boundary, its ``source`` image and its ``owner`` interpretation."""

    boundaries: Boundaries
    source: np.ndarray
    owner: np.ndarray


QSampler = Callable[[nn.Module, FeatureRows, np.ndarray, np.ndarray, int, np.random.Generator, torch.device | str],
                    SampledQ]
Q_SAMPLERS: Registry[QSampler] = Registry("Q sampling")
register_q_sampler = Q_SAMPLERS.register  #: decorator adding a way of sampling Q under a name
q_samplers = Q_SAMPLERS.names  #: the registered names (the first is the default)
get_q_sampler = Q_SAMPLERS.get


@register_q_sampler("reference-points")
def reference_points(head: nn.Module, rows: FeatureRows, predictions: np.ndarray, inputs: np.ndarray, q: int,
                     rng: np.random.Generator, device: torch.device | str = "cpu") -> SampledQ:
    """The paper's text: Eq. 2 at ``|Q|`` distinct reference images drawn at random, shared by every
    interpretation."""
    source = sample_reference_points(len(predictions), q, rng)
    b = linear_boundaries(head, rows(source), device=device)
    return SampledQ(b, source, np.full(len(source), -1, dtype=np.int64))


#: where the authors' walk starts on the segment from ``ψ(x)`` to ``ψ(x')``: ``0.9 ψ(x) + 0.1 ψ(x')``
AUTHORS_START = 0.1


def _walked_q(head: nn.Module, rows: FeatureRows, predictions: np.ndarray, inputs: np.ndarray, q: int,
              rng: np.random.Generator, device: torch.device | str, start_at: float) -> SampledQ:
    """Per input ``x``: ``|Q|`` reference images ``x'`` of another predicted class, the segment from
    ``ψ(x)`` to each bisected from ``ψ(x) + start_at (ψ(x') - ψ(x))`` (:func:`boundary_search`), and
    Eq. 2 at the points found."""
    srcs, owners, points = [], [], []
    for v, x in enumerate(inputs):
        others = sample_other_class(predictions, int(x), q, rng)
        start = np.repeat(rows(np.array([int(x)]))[:1], len(others), axis=0)
        points.append(boundary_search(head, start, rows(others), device=device, start_at=start_at))
        srcs.append(others)
        owners.append(np.full(len(others), v, dtype=np.int64))
    b = linear_boundaries(head, np.concatenate(points), device=device)
    return SampledQ(b, np.concatenate(srcs), np.concatenate(owners))


@register_q_sampler("boundary-search")
def boundary_search_q(head: nn.Module, rows: FeatureRows, predictions: np.ndarray, inputs: np.ndarray, q: int,
                      rng: np.random.Generator, device: torch.device | str = "cpu") -> SampledQ:
    """The authors' code: for each interpretation's input ``x``, ``|Q|`` reference images of another
    predicted class; Eq. 2 at the point where the segment from ``ψ(x)`` to each crosses ``G``'s
    decision boundary (bisection). Each interpretation owns its ``Q``."""
    return _walked_q(head, rows, predictions, inputs, q, rng, device, start_at=0.0)


@register_q_sampler("boundary-search-authors")
def boundary_search_authors_q(head: nn.Module, rows: FeatureRows, predictions: np.ndarray, inputs: np.ndarray,
                              q: int, rng: np.random.Generator, device: torch.device | str = "cpu") -> SampledQ:
    r"""``boundary-search`` with the authors' start (method.md, "The authors' code, in more detail"): the
    walk along :math:`ψ(x) + λ (ψ(x') - ψ(x))` starts at :math:`λ_0 = 0.1`, i.e. at
    :math:`0.9 ψ(x) + 0.1 ψ(x')` instead of ``ψ(x)``: the first bisection bracket is ``[0.1, 1]``
    (``[0, 0.1]`` where ``Class(x)`` ends before ``λ = 0.1``). Where ``G`` changes class more than once
    along the segment, the crossing found can differ from ``boundary-search``'s."""
    return _walked_q(head, rows, predictions, inputs, q, rng, device, start_at=AUTHORS_START)
