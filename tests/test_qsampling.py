"""The ways of sampling Q (repint.qsampling) on a hand-built head whose boundaries are known.

G(t) = A t + c on flattened ψ with two classes: at a point of class 0, Eq. 2 gives W = A_0 - A_1 and
b = c_0 - c_1; at a point of class 1 the negatives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from repint.config import InterpretationConfig
from repint.qsampling import get_q_sampler, q_samplers

A = np.array([[1.0, 2.0, 0.0, -1.0], [0.0, -1.0, 1.0, 1.0]])
C = np.array([0.5, -0.25])


def head() -> nn.Module:
    lin = nn.Linear(4, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(A))
        lin.bias.copy_(torch.as_tensor(C))
    return nn.Sequential(nn.Flatten(), lin)


def data(seed: int = 0, n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    feats = np.random.default_rng(seed).normal(size=(n, 1, 2, 2)).astype(np.float32)
    preds = (feats.reshape(n, -1) @ A.T + C).argmax(1)
    return feats, preds


def test_the_registry_is_what_the_config_accepts():
    assert q_samplers() == ["reference-points", "boundary-search", "boundary-search-authors"]
    assert InterpretationConfig().q_sampling == q_samplers()[0]
    with pytest.raises(ValueError, match="Unknown Q sampling 'nowhere'; available: reference-points, boundary-search"):
        get_q_sampler("nowhere")


def test_reference_points_are_distinct_shared_and_give_the_hand_computed_boundaries():
    feats, preds = data()
    reads = []

    def rows(ids):
        reads.append(np.asarray(ids))
        return feats[ids]

    q = get_q_sampler("reference-points")(head(), rows, preds, np.array([0, 3]), 5, np.random.default_rng(0))
    assert len(q.source) == 5 == len(np.unique(q.source)) and np.all(np.diff(q.source) > 0)
    assert np.all(q.owner == -1)
    sign = np.where(preds[q.source] == 0, 1.0, -1.0)[:, None]
    np.testing.assert_allclose(q.boundaries.W, sign * (A[0] - A[1]), atol=1e-6)
    np.testing.assert_allclose(q.boundaries.b, sign[:, 0] * (C[0] - C[1]), atol=1e-9)
    np.testing.assert_array_equal(reads[0], q.source)  # one read of exactly the sampled rows


def test_boundary_search_gives_each_input_its_own_q_on_the_decision_boundary():
    feats, preds = data(1, 16)
    inputs = np.array([int(np.flatnonzero(preds == 0)[0]), int(np.flatnonzero(preds == 1)[0])])
    q = get_q_sampler("boundary-search")(head(), lambda ids: feats[ids], preds, inputs, 3, np.random.default_rng(0))
    np.testing.assert_array_equal(q.owner, [0, 0, 0, 1, 1, 1])
    for v, x in enumerate(inputs):  # walked to images of the other class, seen from the input's side
        src = q.source[q.owner == v]
        assert np.all(preds[src] != preds[x])
        sign = 1.0 if preds[x] == 0 else -1.0
        np.testing.assert_allclose(q.boundaries.W[q.owner == v], np.tile(sign * (A[0] - A[1]), (3, 1)), atol=1e-6)


def zigzag_head(knots: tuple[float, float, float] = (0.2, 0.3, 0.46)) -> nn.Module:
    """G on a 1-d ψ = t >= 0: logits (g(t), 0) with g(t) = a - t + 2 ReLU(t - b) - 2 ReLU(t - c) for
    knots (a, b, c). The defaults: g = 0.2 - t on [0, 0.3] (zero at 0.2), t - 0.4 on [0.3, 0.46] (zero at
    0.4), 0.52 - t beyond (zero at 0.52): class 0 on [0, 0.2) and (0.4, 0.52), class 1 elsewhere in
    [0, 1]."""
    a, b, c = knots
    hidden, out = nn.Linear(1, 3), nn.Linear(3, 2)
    with torch.no_grad():
        hidden.weight.fill_(1.0)
        hidden.bias.copy_(torch.tensor([0.0, -b, -c]))
        out.weight.copy_(torch.tensor([[-1.0, 2.0, -2.0], [0.0, 0.0, 0.0]]))
        out.bias.copy_(torch.tensor([a, 0.0]))
    return nn.Sequential(nn.Flatten(), hidden, nn.ReLU(), out)


LINE = np.array([0.0, 1.0], dtype=np.float32).reshape(2, 1, 1, 1)  # ψ(x) = 0 (class 0), ψ(x') = 1 (class 1)


def test_the_authors_start_finds_another_crossing_of_a_zigzag_head():
    # boundary-search bisects [0, 1]: g(0.5) = 0.02 > 0 (class 0), so lo = 0.5 and it walks to the
    # crossing at 0.52, where g = 0.52 - t: Eq. 2 gives W = dg/dt = -1, b = g - W t = 0.52.
    # The authors' start 0.9·0 + 0.1·1 = 0.1 is of class 0 (g = 0.1): it bisects [0.1, 1]; g(0.55) = -0.03,
    # g(0.325) = -0.075, g(0.2125) = -0.0125 are class 1, g(0.15625) > 0: it walks to the crossing at 0.2,
    # where g = 0.2 - t: W = -1, b = 0.2.
    preds = np.array([0, 1])
    for name, crossing in (("boundary-search", 0.52), ("boundary-search-authors", 0.2)):
        q = get_q_sampler(name)(zigzag_head(), lambda ids: LINE[ids], preds, np.array([0]), 1,
                                np.random.default_rng(0))
        np.testing.assert_array_equal(q.source, [1])
        np.testing.assert_array_equal(q.owner, [0])
        np.testing.assert_allclose(q.boundaries.W, [[-1.0]], atol=1e-9)
        np.testing.assert_allclose(q.boundaries.b, [crossing], atol=1e-9)
    from repint.boundaries import boundary_search

    for start_at, crossing in ((0.0, 0.52), (0.1, 0.2)):
        point = boundary_search(zigzag_head(), LINE[:1], LINE[1:], start_at=start_at)[0, 0, 0, 0]
        assert crossing - 1e-5 ** 0.5 < point < crossing  # still class 0, Δ² < 1e-5
    with pytest.raises(ValueError, match="start_at"):
        boundary_search(zigzag_head(), LINE[:1], LINE[1:], start_at=1.0)


def test_the_authors_start_past_the_boundary_brackets_from_the_input():
    # g = 0.05 - t (knots beyond [0, 1]): the start 0.1 is already class 1, so the bracket is [0, 0.1]
    # and both walks find the one crossing, 0.05: W = -1, b = 0.05.
    head = zigzag_head((0.05, 2.0, 3.0))
    for name in ("boundary-search", "boundary-search-authors"):
        q = get_q_sampler(name)(head, lambda ids: LINE[ids], np.array([0, 1]), np.array([0]), 1,
                                np.random.default_rng(0))
        np.testing.assert_allclose(q.boundaries.W, [[-1.0]], atol=1e-9)
        np.testing.assert_allclose(q.boundaries.b, [0.05], atol=1e-9)
