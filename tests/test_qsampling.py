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
    assert q_samplers() == ["reference-points", "boundary-search"]
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
