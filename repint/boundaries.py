r"""Linear boundaries of the head ``G`` (Eq. 2) and what the ways of sampling ``Q`` draw from
(:mod:`repint.qsampling` registers them).

At a point ``t`` of feature space, with :math:`\Delta G(t) = \max_1 G(t) - \max_2 G(t)` on logits,

.. math:: W = \partial \Delta G / \partial t \,(t), \qquad b = \Delta G(t) - \langle W, t \rangle

is a linear boundary of ``G``: the hyperplane :math:`\langle W, u\rangle + b = 0`.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["Boundaries", "QClampWarning", "boundary_columns", "boundary_search", "linear_boundaries",
           "sample_reference_points"]


class QClampWarning(UserWarning):
    """|Q| was larger than the images available to sample it from, and was clamped."""


@dataclass
class Boundaries:
    """``W`` ``[M, D]`` (float32), ``b`` ``[M]`` (float64), and the top-2 classes at each point."""

    W: np.ndarray
    b: np.ndarray
    top2: np.ndarray

    def __len__(self) -> int:
        return len(self.b)


def _double_head(head: nn.Module) -> nn.Module:
    return copy.deepcopy(head).double().eval()


@torch.no_grad()
def _delta(head64: nn.Module, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = head64(t)
    top = out.topk(2, dim=1)
    return top.values[:, 0] - top.values[:, 1], top.indices[:, 0]


def linear_boundaries(head: nn.Module, points: np.ndarray, batch_size: int = 256,
                      device: torch.device | str = "cpu") -> Boundaries:
    """Eq. 2 at each point of ``points`` ``[M, *feature_shape]``, batched, computed in float64."""
    head64 = _double_head(head).to(device)
    Ws, bs, tops = [], [], []
    for i in range(0, len(points), batch_size):
        t = torch.as_tensor(points[i: i + batch_size], dtype=torch.float64, device=device).requires_grad_(True)
        out = head64(t)
        top = out.topk(2, dim=1)
        delta = top.values[:, 0] - top.values[:, 1]
        (grad,) = torch.autograd.grad(delta.sum(), t)
        W = grad.reshape(len(t), -1)
        b = delta.detach() - (W * t.detach().reshape(len(t), -1)).sum(1)
        Ws.append(W.float().cpu().numpy())
        bs.append(b.cpu().numpy())
        tops.append(top.indices.cpu().numpy())
    if not Ws:
        return Boundaries(np.zeros((0, int(np.prod(points.shape[1:]))), np.float32), np.zeros(0), np.zeros((0, 2), int))
    return Boundaries(np.concatenate(Ws), np.concatenate(bs), np.concatenate(tops).astype(np.int64))


def sample_reference_points(n_reference: int, q: int, rng: np.random.Generator) -> np.ndarray:
    """Variant ``reference-points`` (the paper's text): ``|Q|`` distinct reference images at random."""
    if q > n_reference:
        warnings.warn(f"|Q| = {q} is larger than the {n_reference} reference images; clamped to {n_reference}.",
                      QClampWarning, stacklevel=2)
        q = n_reference
    return np.sort(rng.choice(n_reference, size=q, replace=False))


def sample_other_class(predictions: np.ndarray, input_index: int, q: int, rng: np.random.Generator) -> np.ndarray:
    """Variant ``boundary-search``: ``|Q|`` reference images of another predicted class than the input's."""
    others = np.flatnonzero(predictions != predictions[input_index])
    if q > len(others):
        warnings.warn(f"|Q| = {q} is larger than the {len(others)} reference images of another class than "
                      f"input {input_index}; clamped to {len(others)}.", QClampWarning, stacklevel=2)
        q = len(others)
    return np.sort(rng.choice(others, size=q, replace=False))


def boundary_columns(owner: np.ndarray, centre: int) -> np.ndarray:
    r"""Boundary ids of ``Q`` for one centre: :math:`Q_v = \{h : \mathrm{owner}(h) \in \{-1, v\}\}`, the
    shared ones (owner ``-1``: ``reference-points``) and the centre's own (``boundary-search``), in
    increasing order."""
    owner = np.asarray(owner)
    return np.flatnonzero((owner == -1) | (owner == centre))


def boundary_search(head: nn.Module, start: np.ndarray, ends: np.ndarray, tol: float = 1e-5,
                    max_iter: int = 100, device: torch.device | str = "cpu", start_at: float = 0.0) -> np.ndarray:
    r"""Bisect each segment ``start[i] -> ends[i]`` to a point still of ``Class(start[i])`` with
    ``ΔG² < tol`` (the authors' published code). Returns the points ``[M, *feature_shape]``.

    ``start`` and ``ends`` have the same shape; ``Class(ends[i]) != Class(start[i])`` is required.
    The walk is over :math:`p(λ) = a + λ (e - a)`, bracketing ``λ`` in ``[lo, hi]`` with ``p(lo)`` of
    ``Class(a)`` and ``p(hi)`` not. ``start_at = λ₀ > 0`` starts it at ``p(λ₀)`` (the authors' code:
    ``λ₀ = 0.1``, i.e. ``0.9 a + 0.1 e``): the bracket is ``[λ₀, 1]`` where ``p(λ₀)`` is still of
    ``Class(a)``, and ``[0, λ₀]`` where the boundary is nearer than that (the point found is then
    always of ``Class(a)``).
    """
    head64 = _double_head(head).to(device)
    a = torch.as_tensor(start, dtype=torch.float64, device=device)
    e = torch.as_tensor(ends, dtype=torch.float64, device=device)
    _, cls = _delta(head64, a)
    _, cls_end = _delta(head64, e)
    if bool((cls_end == cls).any()):
        raise ValueError("boundary_search needs segment ends predicted as another class than their start.")
    shape = (-1,) + (1,) * (a.dim() - 1)
    lo = torch.zeros(len(a), dtype=torch.float64, device=device)
    hi = torch.ones_like(lo)
    if not 0.0 <= start_at < 1.0:
        raise ValueError(f"start_at must lie in [0, 1), got {start_at}.")
    if start_at > 0:
        _, c_start = _delta(head64, a + start_at * (e - a))
        at = torch.full_like(lo, start_at)
        lo, hi = torch.where(c_start == cls, at, lo), torch.where(c_start == cls, hi, at)
    done = torch.zeros(len(a), dtype=torch.bool, device=device)
    for _ in range(max_iter):
        point = a + lo.view(shape) * (e - a)
        delta, _ = _delta(head64, point)
        done |= delta ** 2 < tol
        if bool(done.all()):
            break
        mid = (lo + hi) / 2
        _, c_mid = _delta(head64, a + mid.view(shape) * (e - a))
        same = c_mid == cls
        lo = torch.where(~done & same, mid, lo)
        hi = torch.where(~done & ~same, mid, hi)
    point = a + lo.view(shape) * (e - a)
    return point.cpu().numpy()
