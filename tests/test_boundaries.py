"""Eq. 2 linear boundaries and the two samplings of Q, on a hand-built piecewise-linear head.

The head ``G(u) = W2 · ReLU(W1 u + b1) + b2`` with

    W1 = [[1, -1],      b1 = [0, -1]
          [1,  1]]
    W2 = [[2,  0],      b2 = [0, 0.5, 2.5]
          [0,  1],
          [1, -1]]

so with ``z = W1 u + b1 = (u1 - u2, u1 + u2 - 1)`` and ``r = ReLU(z)``:
``y0 = 2 r1``, ``y1 = r2 + 0.5``, ``y2 = r1 - r2 + 2.5``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from repint.boundaries import (
    QClampWarning,
    boundary_columns,
    boundary_search,
    linear_boundaries,
    sample_other_class,
    sample_reference_points,
)


def hand_head(flatten: bool = False) -> nn.Module:
    l1, l2 = nn.Linear(2, 2), nn.Linear(2, 3)
    with torch.no_grad():
        l1.weight.copy_(torch.tensor([[1.0, -1.0], [1.0, 1.0]]))
        l1.bias.copy_(torch.tensor([0.0, -1.0]))
        l2.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))
        l2.bias.copy_(torch.tensor([0.0, 0.5, 2.5]))
    layers = [nn.Flatten()] if flatten else []
    return nn.Sequential(*layers, l1, nn.ReLU(), l2).eval()


def logits(head: nn.Module, points: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return head(torch.as_tensor(points, dtype=torch.float32)).numpy()


def test_hand_head_logits():
    # t = (2, 1): z = (1, 2), both ReLUs active, r = (1, 2): y = (2, 2.5, 1.5).
    # t = (0, 3): z = (-3, 2), only the second is active, r = (0, 2): y = (0, 2.5, 0.5).
    np.testing.assert_allclose(logits(hand_head(), np.array([[2.0, 1.0], [0.0, 3.0]])),
                               [[2.0, 2.5, 1.5], [0.0, 2.5, 0.5]])


def test_linear_boundaries_closed_form():
    # t = (2, 1): top-1 = class 1 (2.5), top-2 = class 0 (2). In this region (both ReLUs active)
    #   ΔG(u) = y1 - y0 = (u1 + u2 - 1) + 0.5 - 2 (u1 - u2) = -u1 + 3 u2 - 0.5
    #   -> W = (-1, 3), b = -0.5; ΔG(t) = -2 + 3 - 0.5 = 0.5 = <W, t> + b.
    # t = (0, 3): top-1 = class 1 (2.5), top-2 = class 2 (0.5). Here r1 = 0:
    #   ΔG(u) = y1 - y2 = (r2 + 0.5) - (-r2 + 2.5) = 2 r2 - 2 = 2 u1 + 2 u2 - 4
    #   -> W = (2, 2), b = -4; ΔG(t) = 6 - 4 = 2.
    points = np.array([[2.0, 1.0], [0.0, 3.0]], dtype=np.float32)
    bd = linear_boundaries(hand_head(), points)
    assert len(bd) == 2
    assert bd.W.shape == (2, 2) and bd.W.dtype == np.float32
    np.testing.assert_allclose(bd.W, [[-1.0, 3.0], [2.0, 2.0]], atol=1e-12)
    np.testing.assert_allclose(bd.b, [-0.5, -4.0], atol=1e-12)
    assert bd.top2.tolist() == [[1, 0], [1, 2]]
    # <W, t> + b == ΔG(t) = top1 - top2 of the logits.
    y = np.sort(logits(hand_head(), points), axis=1)
    np.testing.assert_allclose((bd.W * points).sum(1) + bd.b, y[:, -1] - y[:, -2], atol=1e-6)
    np.testing.assert_allclose((bd.W * points).sum(1) + bd.b, [0.5, 2.0], atol=1e-12)


def test_linear_boundaries_flattens_feature_shape_and_batches():
    # The same points as [M, 1, 2] feature maps through a Flatten head, in batches of 1: same W, b.
    points = np.array([[[2.0, 1.0]], [[0.0, 3.0]]], dtype=np.float32)
    bd = linear_boundaries(hand_head(flatten=True), points, batch_size=1)
    np.testing.assert_allclose(bd.W, [[-1.0, 3.0], [2.0, 2.0]], atol=1e-12)
    np.testing.assert_allclose(bd.b, [-0.5, -4.0], atol=1e-12)
    empty = linear_boundaries(hand_head(flatten=True), np.zeros((0, 1, 2), dtype=np.float32))
    assert empty.W.shape == (0, 2) and len(empty) == 0 and empty.top2.shape == (0, 2)


def test_linear_boundaries_does_not_change_the_head():
    head = hand_head()
    linear_boundaries(head, np.array([[2.0, 1.0]], dtype=np.float32))
    assert head[0].weight.dtype == torch.float32
    assert head[0].weight.grad is None


def test_boundary_search_hand_segments():
    # Segment 1: (2, 1) [class 1] -> (5, 0) [z = (5, 4): y = (10, 4.5, 3.5), class 0].
    #   p(s) = (2 + 3s, 1 - s): z = (1 + 4s, 2 + 2s) > 0 on [0, 1], so
    #   y0 = 2 + 8s, y1 = 2.5 + 2s, y2 = 1.5 + 2s: class 1 until y0 = y1 at s = 1/12,
    #   the point (2.25, 11/12).
    # Segment 2: (0, 3) [class 1] -> (-1, 0.5) [z = (-1.5, -1.5): y = (0, 0.5, 2.5), class 2].
    #   p(s) = (-s, 3 - 2.5s): z1 = 1.5s - 3 < 0, z2 = 2 - 3.5s > 0 for s < 4/7, so there
    #   y0 = 0, y1 = 2.5 - 3.5s, y2 = 0.5 + 3.5s: y1 = y2 at s = 2/7, the point (-2/7, 16/7).
    head = hand_head()
    start = np.array([[2.0, 1.0], [0.0, 3.0]], dtype=np.float32)
    ends = np.array([[5.0, 0.0], [-1.0, 0.5]], dtype=np.float32)
    assert logits(head, ends).argmax(1).tolist() == [0, 2]
    pts = boundary_search(head, start, ends)
    assert pts.shape == (2, 2)
    np.testing.assert_allclose(pts, [[2.25, 11 / 12], [-2 / 7, 16 / 7]], atol=2e-3)
    # Still the start's class (1), and ΔG² < 1e-5.
    with torch.no_grad():
        y = head.double()(torch.as_tensor(pts, dtype=torch.float64)).numpy()
    assert y.argmax(1).tolist() == [1, 1]
    top = np.sort(y, axis=1)
    assert ((top[:, -1] - top[:, -2]) ** 2 < 1e-5).all()
    # Eq. 2 at the found points gives the boundaries between classes 1|0 and 1|2.
    bd = linear_boundaries(hand_head(), pts)
    assert bd.top2.tolist() == [[1, 0], [1, 2]]
    np.testing.assert_allclose(bd.W, [[-1.0, 3.0], [2.0, 2.0]], atol=1e-6)


def test_boundary_search_keeps_feature_shape():
    pts = boundary_search(hand_head(flatten=True), np.array([[[2.0, 1.0]]]), np.array([[[5.0, 0.0]]]))
    assert pts.shape == (1, 1, 2)
    np.testing.assert_allclose(pts[0, 0], [2.25, 11 / 12], atol=2e-3)


def test_boundary_search_rejects_same_class_end():
    # (2, 1) and (0, 3) are both class 1.
    with pytest.raises(ValueError, match="another class"):
        boundary_search(hand_head(), np.array([[2.0, 1.0], [2.0, 1.0]]), np.array([[5.0, 0.0], [0.0, 3.0]]))


def test_sample_reference_points():
    rng = np.random.default_rng(0)
    idx = sample_reference_points(10, 4, rng)
    assert len(idx) == 4
    assert len(set(idx.tolist())) == 4
    assert np.all(np.diff(idx) > 0)
    assert idx.min() >= 0 and idx.max() < 10
    # Same seed, same sample.
    assert np.array_equal(idx, sample_reference_points(10, 4, np.random.default_rng(0)))
    with pytest.warns(QClampWarning, match="clamped to 5"):
        all_idx = sample_reference_points(5, 8, np.random.default_rng(0))
    assert all_idx.tolist() == [0, 1, 2, 3, 4]


def test_sample_reference_points_no_warning_when_q_fits():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(sample_reference_points(5, 5, np.random.default_rng(1))) == 5


def test_sample_other_class():
    predictions = np.array([0, 1, 0, 2, 1, 0])
    # Input 0 has class 0; the other-class images are 1, 3, 4.
    for seed in range(5):
        idx = sample_other_class(predictions, 0, 2, np.random.default_rng(seed))
        assert len(idx) == 2 and idx[0] < idx[1]
        assert set(idx.tolist()) <= {1, 3, 4}
    # Input 3 (class 2): every other image qualifies except itself.
    idx = sample_other_class(predictions, 3, 5, np.random.default_rng(0))
    assert idx.tolist() == [0, 1, 2, 4, 5]
    with pytest.warns(QClampWarning, match="clamped to 3"):
        idx = sample_other_class(predictions, 0, 5, np.random.default_rng(0))
    assert idx.tolist() == [1, 3, 4]


def test_boundary_columns_by_hand():
    # reference-points: every boundary is shared (owner -1); boundary-search: each centre owns its own
    owner = np.array([-1, 0, 1, -1, 0, 2])
    assert boundary_columns(owner, 0).tolist() == [0, 1, 3, 4]
    assert boundary_columns(owner, 2).tolist() == [0, 3, 5]
    assert boundary_columns(owner, 7).tolist() == [0, 3]  # no boundaries of its own: the shared ones
    assert boundary_columns(np.full(3, -1), 1).tolist() == [0, 1, 2]
    assert boundary_columns(np.array([0, 0, 1, 1]), 1).tolist() == [2, 3]


def test_boundary_columns_split_q_by_owner():
    owner = np.random.default_rng(0).integers(-1, 4, 50)
    cols = [set(boundary_columns(owner, c).tolist()) for c in range(4)]
    shared = set(np.flatnonzero(owner == -1).tolist())
    for c in range(4):
        assert cols[c] >= shared  # every centre has the shared ones
        assert all(owner[h] == c for h in cols[c] - shared)  # and no other centre's
    assert set().union(*cols) == set(range(50))
