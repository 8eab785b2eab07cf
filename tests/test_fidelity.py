"""Deletion/insertion, ROAD, kept probabilities and rank agreement on precomputed maps, by hand.

The model is linear over the flattened pixels with two classes, logits ``(s, 0)``, so that
``Y_0 = e^s / (e^s + e^0) = 1 / (1 + e^{-s})`` and ``Y_1 = 1 / (1 + e^{s})``, ``s`` written out per case.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from repint.fidelity import (
    BASELINES,
    CurveMetric,
    baseline_images,
    blur_baseline,
    curve_auc,
    kept_probabilities,
    pairwise_rank_agreement,
    perturbation_curves,
    pixel_order,
    rank_agreement,
    road_impute,
    road_scores,
    thumbnail,
)
from repint.metrics import AverageDropIncrease, keep_count, keep_top_fraction, softmax


def y0(s: float) -> float:
    """Softmax probability of class 0 for logits (s, 0)."""
    return 1.0 / (1.0 + math.exp(-s))


def y1(s: float) -> float:
    """Softmax probability of class 1 for logits (s, 0)."""
    return 1.0 / (1.0 + math.exp(s))


def linear_forward(weights: list[float]):
    """Logits (w·x, 0) of images [m, C, H, W] flattened, by an nn.Linear with the given weights."""
    model = nn.Linear(len(weights), 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([weights, [0.0] * len(weights)]))

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(len(x), -1)).numpy()

    return forward


class Counting:
    """Wraps a forward: records each call's size, fails on more than ``batch`` images or a non-array."""

    def __init__(self, forward, batch: int) -> None:
        self.forward, self.batch, self.sizes = forward, batch, []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        assert isinstance(x, np.ndarray) and x.ndim == 4
        assert len(x) <= self.batch
        self.sizes.append(len(x))
        return self.forward(x)


# 1-channel 2x2 images, pixels p0 p1 / p2 p3 (row-major), weights w = (1, 2, 3, 4).
W4 = [1.0, 2.0, 3.0, 4.0]
IMAGES = np.array([[[[1.0, 1.0], [1.0, 1.0]]],          # A: s = 1 + 2 + 3 + 4 = 10
                   [[[0.5, 1.0], [0.0, 0.25]]]],        # B: s = 0.5·1 + 1·2 + 0·3 + 0.25·4 = 3.5
                  dtype=np.float32)
MAPS = np.array([[[0.1, 0.4], [0.3, 0.2]],              # A: order p1, p2, p3, p0
                 [[0.0, 1.0], [1.0, 0.0]]])             # B: ties; order p1, p2, p0, p3
CLASSES = np.array([0, 1])                              # A tracks Y_0, B tracks Y_1


def test_pixel_order_descending_ties_by_index():
    maps = np.array([[[0.1, 0.4], [0.3, 0.2]],
                     [[0.0, 1.0], [1.0, 0.0]],
                     [[3.0, 3.0], [3.0, 3.0]],
                     [[-1.0, -0.5], [-1.0, 2.0]]])
    np.testing.assert_array_equal(pixel_order(maps), [[1, 2, 3, 0], [1, 2, 0, 3], [0, 1, 2, 3], [3, 1, 0, 2]])


def test_deletion_curve_by_hand():
    # steps = 4 on 4 pixels: k_t = round(t/4 · 4) = t; black replaces the top-k pixels.
    # A: 10; -p1 (2): 8; -p2 (3): 5; -p3 (4): 1; -p0 (1): 0.
    # B: 3.5; -p1 (1·2): 1.5; -p2 (0·3): 1.5; -p0 (0.5·1): 1.0; -p3 (0.25·4): 0.
    curves = perturbation_curves(linear_forward(W4), IMAGES, MAPS, CLASSES, "deletion", steps=4)
    expected = [[y0(10), y0(8), y0(5), y0(1), y0(0)],
                [y1(3.5), y1(1.5), y1(1.5), y1(1.0), y1(0)]]
    np.testing.assert_allclose(curves, expected, rtol=1e-6)


def test_insertion_curve_by_hand():
    # A from black: 0; +p1: 2; +p2: 2 + 3 = 5; +p3: 5 + 4 = 9; +p0: 10.
    # B from black: 0; +p1: 2; +p2 (0): 2; +p0 (0.5): 2.5; +p3 (0.25·4): 3.5.
    curves = perturbation_curves(linear_forward(W4), IMAGES, MAPS, CLASSES, "insertion", steps=4)
    expected = [[y0(0), y0(2), y0(5), y0(9), y0(10)],
                [y1(0), y1(2), y1(2), y1(2.5), y1(3.5)]]
    np.testing.assert_allclose(curves, expected, rtol=1e-6)


def test_curves_steps_2():
    # k = 0, round(0.5 · 4) = 2, 4: deletion A after p1, p2: 10 - 2 - 3 = 5; B: 3.5 - 2 - 0 = 1.5.
    fwd = linear_forward(W4)
    dele = perturbation_curves(fwd, IMAGES, MAPS, CLASSES, "deletion", steps=2)
    ins = perturbation_curves(fwd, IMAGES, MAPS, CLASSES, "insertion", steps=2)
    np.testing.assert_allclose(dele, [[y0(10), y0(5), y0(0)], [y1(3.5), y1(1.5), y1(0)]], rtol=1e-6)
    np.testing.assert_allclose(ins, [[y0(0), y0(5), y0(10)], [y1(0), y1(2), y1(3.5)]], rtol=1e-6)


def test_blur_baseline_of_a_constant_image_is_the_constant():
    x = np.empty((1, 2, 5, 7), dtype=np.float32)
    x[0, 0], x[0, 1] = 0.2, 0.7  # channels are blurred separately, never mixed
    np.testing.assert_allclose(blur_baseline(x), x, atol=1e-6)
    np.testing.assert_allclose(baseline_images(x, "blur"), x, atol=1e-6)
    np.testing.assert_array_equal(baseline_images(x, "black"), np.zeros_like(x))
    assert BASELINES == ("black", "blur")
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_images(x, "grey")


def test_blur_default_sigma():
    rng = np.random.default_rng(0)
    x32, x8 = rng.random((1, 1, 32, 32)), rng.random((1, 1, 8, 8))
    np.testing.assert_array_equal(blur_baseline(x32), blur_baseline(x32, sigma=2.0))  # 32 / 16 = 2
    np.testing.assert_array_equal(blur_baseline(x8), blur_baseline(x8, sigma=1.0))    # max(1, 8 / 16) = 1
    np.testing.assert_array_equal(blur_baseline(x8, sigma=0.0), x8)
    assert not np.allclose(blur_baseline(x8), x8)


def test_blur_deletion_of_a_constant_image_is_flat():
    # the blur of a constant 0.5 image is itself, so every step sees s = 0.5 · (1 + 2 + 3 + 4) = 5
    x = np.full((1, 1, 2, 2), 0.5, dtype=np.float32)
    curves = perturbation_curves(linear_forward(W4), x, MAPS[:1], CLASSES[:1], "deletion", "blur", steps=4)
    np.testing.assert_allclose(curves, [[y0(5)] * 5], rtol=1e-6)


def test_curve_auc_by_hand():
    # x = 0, 0.5, 1: 0.5 · (0.2 + 0.6) / 2 + 0.5 · (0.6 + 1.0) / 2 = 0.2 + 0.4 = 0.6
    # x = 0, 0.25, ..., 1: 0.25 · ((0 + 1) / 2 + (1 + 1) / 2 + (1 + 0) / 2 + 0) = 0.25 · 2 = 0.5
    np.testing.assert_allclose(curve_auc(np.array([[0.2, 0.6, 1.0]])), [0.6])
    np.testing.assert_allclose(curve_auc(np.array([[0.0, 1.0, 1.0, 0.0, 0.0]])), [0.5])
    with pytest.raises(ValueError):
        curve_auc(np.array([[1.0]]))


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_given_endpoints_are_used_and_not_recomputed(mode):
    y_full, y_base = np.array([0.123, 0.321]), np.array([0.456, 0.654])
    fwd = Counting(linear_forward(W4), batch=4)
    curves = perturbation_curves(fwd, IMAGES, MAPS, CLASSES, mode, steps=4, batch=4, y_full=y_full, y_baseline=y_base)
    first, last = (y_full, y_base) if mode == "deletion" else (y_base, y_full)
    np.testing.assert_array_equal(curves[:, 0], first)
    np.testing.assert_array_equal(curves[:, -1], last)
    assert fwd.sizes == [4, 2]  # 2 images x steps t = 1, 2, 3 = 6 perturbed images, in calls of at most 4


def test_computed_endpoints_and_call_count():
    fwd = Counting(linear_forward(W4), batch=4)
    curves = perturbation_curves(fwd, IMAGES, MAPS, CLASSES, "deletion", steps=4, batch=4)
    np.testing.assert_allclose(curves[:, 0], [y0(10), y1(3.5)], rtol=1e-6)  # the images themselves
    np.testing.assert_allclose(curves[:, -1], [0.5, 0.5], rtol=1e-6)        # black: s = 0
    assert fwd.sizes == [4, 4, 2]  # 2 x 5 steps
    one = Counting(linear_forward(W4), batch=128)
    perturbation_curves(one, IMAGES, MAPS, CLASSES, "insertion", steps=4)
    assert one.sizes == [10]  # all steps of both images in ONE call
    single = Counting(linear_forward(W4), batch=1)
    perturbation_curves(single, IMAGES, MAPS, CLASSES, "insertion", steps=4, batch=1)
    assert single.sizes == [1] * 10


def test_equal_keep_counts_share_a_forward():
    # 2x2 with steps = 8: k = round(t/2) = 0, 1, 1, 2, 2, 3, 3, 4, 4 (halves up) -> 5 distinct, 3 unknown per image
    fwd = Counting(linear_forward(W4), batch=128)
    curves = perturbation_curves(fwd, IMAGES[:1], MAPS[:1], CLASSES[:1], "deletion", steps=8,
                                 y_full=np.array([y0(10)]), y_baseline=np.array([0.5]))
    assert fwd.sizes == [3]
    np.testing.assert_allclose(curves[0], [y0(s) for s in (10, 8, 8, 5, 5, 1, 1, 0, 0)], rtol=1e-6)


def test_curve_argument_errors():
    fwd = linear_forward(W4)
    with pytest.raises(ValueError, match="y_full"):
        perturbation_curves(fwd, IMAGES, MAPS, CLASSES, "deletion", y_full=np.array([0.5]))
    with pytest.raises(ValueError, match="mode"):
        perturbation_curves(fwd, IMAGES, MAPS, CLASSES, "both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="maps"):
        perturbation_curves(fwd, IMAGES, MAPS[:, :1], CLASSES, "deletion")
    with pytest.raises(ValueError, match="logits"):
        perturbation_curves(lambda x: np.zeros((1, 2)), IMAGES, MAPS, CLASSES, "deletion")


def test_kept_probabilities_by_hand():
    # fractions 0.25, 0.5, 1 of 4 pixels keep 1, 2, 4; the rest is black.
    # A: p1: 2; p1, p2: 5; all: 10.  B: p1: 2; p1, p2: 2 + 0 = 2; all: 3.5.  0.2 keeps round(0.8) = 1 pixel.
    fwd = Counting(linear_forward(W4), batch=4)
    kept = kept_probabilities(fwd, IMAGES, MAPS, CLASSES, (0.25, 0.5, 1.0, 0.2), batch=4)
    np.testing.assert_allclose(kept, [[y0(2), y0(5), y0(10), y0(2)], [y1(2), y1(2), y1(3.5), y1(2)]], rtol=1e-6)
    assert fwd.sizes == [4, 4]
    # AD at 25% for A alone: 100 · (Y(10) - Y(2)) / Y(10); AI: 0 (Y grew for neither)
    m = AverageDropIncrease()
    m.update(np.array([y0(10)]), kept[:1, 0])
    assert m.summary()["AD"] == pytest.approx(100 * (y0(10) - y0(2)) / y0(10), rel=1e-6)
    assert m.summary()["AI"] == 0.0


def test_road_impute_linear_image():
    # channel 0 = column / 4, channel 1 = row / 3; the weighted mean of the 8 neighbours of a linear function
    # (symmetric weights) is its own value, so removing (1, 1) and (1, 2) gives them back: 1/4, 2/4 and 1/3, 1/3.
    x = np.zeros((1, 2, 3, 4), dtype=np.float32)
    x[0, 0] = np.arange(4) / 4
    x[0, 1] = (np.arange(3) / 3)[:, None]
    removed = np.zeros((1, 3, 4), dtype=bool)
    removed[0, 1, 1:3] = True
    out = road_impute(np.where(removed[:, None], 9.0, x).astype(np.float32), removed, noise=0.0)
    np.testing.assert_allclose(out[0, 0, 1, 1:3], [0.25, 0.5], atol=1e-6)
    np.testing.assert_allclose(out[0, 1, 1, 1:3], [1 / 3, 1 / 3], atol=1e-6)
    np.testing.assert_array_equal(out[~removed[:, None].repeat(2, 1)], x[~removed[:, None].repeat(2, 1)])


def test_road_impute_weights_by_hand():
    # interior (1, 1): corner (0, 0) = 1 with weight 1/12, edge (2, 1) = 0.6 with 1/6: 1/12 + 0.1 = 0.18333...
    x = np.array([[[[1.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.6, 0.0]]]], dtype=np.float32)
    removed = np.zeros((1, 3, 3), dtype=bool)
    removed[0, 1, 1] = True
    assert road_impute(x, removed, noise=0.0)[0, 0, 1, 1] == pytest.approx(1 / 12 + 0.6 / 6, abs=1e-6)
    # corner (0, 0) of [[?, 0.5], [0.25, 1]]: (0.5/6 + 0.25/6 + 1/12) / (1/6 + 1/6 + 1/12) = 2.5 / 5 = 0.5
    c = np.array([[[[7.0, 0.5], [0.25, 1.0]]]], dtype=np.float32)
    corner = np.array([[[True, False], [False, False]]])
    assert road_impute(c, corner, noise=0.0)[0, 0, 0, 0] == pytest.approx(0.5, abs=1e-6)
    # nothing known: 0; nothing removed: the image
    np.testing.assert_array_equal(road_impute(c, np.ones((1, 2, 2), bool), noise=0.0), np.zeros_like(c))
    np.testing.assert_array_equal(road_impute(c, np.zeros((1, 2, 2), bool)), c)


def test_road_impute_noise_is_seeded_and_leaves_torch_rng_alone():
    rng = np.random.default_rng(1)
    x = rng.random((2, 3, 6, 6)).astype(np.float32)
    removed = rng.random((2, 6, 6)) < 0.4
    state = torch.get_rng_state()
    a, b = road_impute(x, removed, seed=5), road_impute(x, removed, seed=5)
    assert torch.equal(state, torch.get_rng_state())
    np.testing.assert_array_equal(a, b)
    c = road_impute(x, removed, seed=6)
    rm = removed[:, None].repeat(3, 1)
    assert not np.allclose(a[rm], c[rm])
    np.testing.assert_array_equal(a[~rm], x[~rm])  # kept pixels untouched, same dtype
    np.testing.assert_array_equal(c[~rm], x[~rm])
    assert a.dtype == np.float32
    # the noise of image j is 0.01 · default_rng(seed + j).standard_normal((C, H, W)) at the removed pixels
    clean = road_impute(x, removed, noise=0.0)
    for j in range(2):
        z = np.random.default_rng(5 + j).standard_normal((3, 6, 6))
        np.testing.assert_allclose(a[j][rm[j]] - clean[j][rm[j]], 0.01 * z[rm[j]], atol=1e-6)


W9 = [1.0] * 9  # 3x3, s = sum of the pixels
X9 = np.array([[[[0.0, 0.6, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]]], dtype=np.float32)  # s = 1.6
M9 = np.array([[[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])  # the centre first


def test_road_scores_by_hand():
    fwd = linear_forward(W9)
    # 0.1 of 9 pixels: round(0.9) = 1, the centre. remove: centre <- 0.6 / 6 = 0.1 (the only non-zero neighbour
    # (0, 1), weight 1/6): s = 0.6 + 0.1 = 0.7. keep: the 8 others from the centre alone; the constant 1 solves
    # their system (weighted means of a constant), so s = 9.
    remove = road_scores(fwd, X9, M9, np.array([0]), (0.1,), mode="remove", noise=0.0)
    keep = road_scores(fwd, X9, M9, np.array([0]), (0.1,), mode="keep", noise=0.0)
    np.testing.assert_allclose(remove, [[y0(0.7)]], rtol=1e-6)
    np.testing.assert_allclose(keep, [[y0(9.0)]], rtol=1e-5)


def test_road_scores_without_imputation_is_the_plain_probability():
    fwd = Counting(linear_forward(W4), batch=4)
    plain = [y0(10), y1(3.5)]
    keep_all = road_scores(fwd, IMAGES, MAPS, CLASSES, (1.0,), mode="keep")
    remove_none = road_scores(fwd, IMAGES, MAPS, CLASSES, (0.0,), mode="remove")
    np.testing.assert_allclose(keep_all[:, 0], plain, rtol=1e-6)
    np.testing.assert_allclose(remove_none[:, 0], plain, rtol=1e-6)


def test_road_scores_batches_and_determinism():
    rng = np.random.default_rng(2)
    x = rng.random((3, 1, 2, 2)).astype(np.float32)
    maps = rng.random((3, 2, 2))
    fwd = Counting(linear_forward(W4), batch=4)
    a = road_scores(fwd, x, maps, np.array([0, 1, 0]), mode="remove", batch=4, seed=3)
    assert a.shape == (3, 3) and fwd.sizes == [4, 4, 1]  # 3 images x 3 fractions
    np.testing.assert_array_equal(a, road_scores(fwd, x, maps, np.array([0, 1, 0]), mode="remove", batch=4, seed=3))
    with pytest.raises(ValueError, match="fractions"):
        road_scores(fwd, x, maps, np.array([0, 1, 0]), (1.5,), mode="keep")


A = [1.0, 2.0, 3.0]  # centred ranks (-1, 0, 1), norm² 2


def test_rank_agreement_by_hand():
    assert rank_agreement(np.array([A, A])) == pytest.approx(1.0)
    assert rank_agreement(np.array([[1.0, 2, 3, 4], [4, 3, 2, 1]])) == pytest.approx(-1.0)
    # b = (1, 3, 2) -> (-1, 1, 0), c = (3, 1, 2) -> (1, -1, 0):
    # ρ_ab = 1/2, ρ_ac = -1/2, ρ_bc = (-1 - 1) / 2 = -1; mean = (1/2 - 1/2 - 1) / 3 = -1/3
    assert rank_agreement(np.array([A, [1.0, 3, 2], [3.0, 1, 2]])) == pytest.approx(-1 / 3)
    # ties: (0, 0, 1) -> ranks (1.5, 1.5, 3) -> (-0.5, -0.5, 1), norm² 1.5: ρ = 1.5 / √(1.5 · 2) = √3 / 2
    assert rank_agreement(np.array([A, [0.0, 0, 1]])) == pytest.approx(math.sqrt(3) / 2)
    # a constant map counts 0: (ρ_aa + 0 + 0) / 3
    assert rank_agreement(np.array([A, A, [5.0, 5, 5]])) == pytest.approx(1 / 3)
    # maps [n, H, W] are flattened; fewer than 2 maps: nan
    assert rank_agreement(np.array([[[1.0, 2], [3, 4]], [[2.0, 4], [6, 8]]])) == pytest.approx(1.0)
    assert math.isnan(rank_agreement(np.array([A])))


def test_thumbnail_block_means():
    t = thumbnail(np.arange(16.0).reshape(1, 4, 4), size=2)
    assert t.dtype == np.float32 and t.shape == (1, 2, 2)
    # blocks (0, 1, 4, 5), (2, 3, 6, 7), (8, 9, 12, 13), (10, 11, 14, 15)
    np.testing.assert_allclose(t[0], [[2.5, 4.5], [10.5, 12.5]])
    # 2x6 to min(2, 3) x min(6, 3): pairs along W
    np.testing.assert_allclose(thumbnail(np.arange(12.0).reshape(1, 2, 6), size=3)[0], [[0.5, 2.5, 4.5],
                                                                                       [6.5, 8.5, 10.5]])
    small = np.arange(4.0).reshape(1, 2, 2)
    np.testing.assert_array_equal(thumbnail(small), small.astype(np.float32))  # smaller than size: as it is


def test_pairwise_rank_agreement_groups_and_bound():
    up, down = [[1.0, 2], [3, 4]], [[4.0, 3], [2, 1]]
    thumbs = np.array([up, up, up, down, down])
    got = pairwise_rank_agreement(thumbs, np.array([0, 1, 0, 1, 2]))
    assert got[0] == (pytest.approx(1.0), 2)
    assert got[1] == (pytest.approx(-1.0), 2)
    assert math.isnan(got[2][0]) and got[2][1] == 1
    # 64 equal maps, then 6 reversed ones: only the first 64 take part
    many = np.array([up] * 64 + [down] * 6)
    assert pairwise_rank_agreement(many, np.full(70, 7)) == {7: (pytest.approx(1.0), 64)}
    assert pairwise_rank_agreement(many[60:], np.zeros(10, int), max_per_group=5)[0][1] == 5


def test_curve_metric():
    m = CurveMetric()
    assert math.isnan(m.summary()["AUC"]) and m.summary()["n"] == 0
    m.update(np.array([[0.2, 0.6, 1.0]]))          # AUC 0.6
    m.update(np.array([[1.0, 0.5, 0.0], [0.0, 0.5, 1.0]]))  # AUC 0.5, 0.5
    s = m.summary()
    assert s["AUC"] == pytest.approx((0.6 + 0.5 + 0.5) / 3) and s["n"] == 3
    np.testing.assert_allclose(s["curve"], [1.2 / 3, 1.6 / 3, 2.0 / 3])
    with pytest.raises(ValueError):
        m.update(np.array([[0.0, 1.0]]))
    m.reset()
    assert m.summary()["n"] == 0


# Random images (2 channels, 2x3), maps with many ties, a fixed random linear 3-class model.
_MODEL = nn.Linear(12, 3)
with torch.no_grad():
    _MODEL.weight.copy_(torch.from_numpy(np.random.default_rng(0).normal(size=(3, 12)).astype(np.float32)))


def _forward3(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return _MODEL(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(len(x), -1)).numpy()


@settings(max_examples=30, deadline=None)
@given(maps=arrays(np.float64, (3, 2, 3), elements=st.integers(0, 3).map(float)),
       images=arrays(np.float32, (3, 2, 2, 3), elements=st.floats(0, 1, width=32)),
       steps=st.integers(1, 6), batch=st.integers(1, 7), baseline=st.sampled_from(BASELINES))
def test_property_endpoints_and_insertion_equals_kept(maps, images, steps, batch, baseline):
    classes = np.array([0, 1, 2])
    idx = np.arange(3)
    fwd = Counting(_forward3, batch)
    dele = perturbation_curves(fwd, images, maps, classes, "deletion", baseline, steps=steps, batch=batch)
    ins = perturbation_curves(fwd, images, maps, classes, "insertion", baseline, steps=steps, batch=batch)
    y_full = softmax(_forward3(images))[idx, classes]
    y_base = softmax(_forward3(baseline_images(images, baseline)))[idx, classes]
    np.testing.assert_allclose(dele[:, 0], y_full, rtol=1e-5)
    np.testing.assert_allclose(ins[:, -1], y_full, rtol=1e-5)
    np.testing.assert_allclose(dele[:, -1], y_base, rtol=1e-5)
    np.testing.assert_allclose(ins[:, 0], y_base, rtol=1e-5)
    fractions = [t / steps for t in range(steps + 1)]
    for f in fractions:  # the top-k of pixel_order is keep_top_fraction's set, ties included
        k = keep_count(2, 3, f)
        expect = np.zeros((3, 6), bool)
        np.put_along_axis(expect, pixel_order(maps)[:, :k], True, axis=1)
        np.testing.assert_array_equal(keep_top_fraction(maps, f).reshape(3, 6), expect)
    if baseline == "black":  # insertion over black at t is exactly AD/AI's masking at t / steps
        kept = kept_probabilities(fwd, images, maps, classes, fractions, batch=batch)
        np.testing.assert_allclose(ins, kept, rtol=1e-5)


@pytest.mark.parametrize("shape", [(3, 1, 6, 5), (2, 3, 9, 9)])
def test_batched_linear_fill_equals_the_road_authors_imputer(shape: tuple[int, int, int, int]) -> None:
    """The vectorised block-diagonal solve gives what pytorch_grad_cam's NoisyLinearImputer (the ROAD
    authors' code, noise off) gives image by image, on random images and masks."""
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    from repint.imputation import _fill_batch

    rng = np.random.default_rng(3)
    images = rng.random(shape).astype(np.float32)
    removed = rng.random((shape[0], *shape[2:])) < 0.6
    ours = _fill_batch(images, removed)
    imputer = NoisyLinearImputer(noise=0.0)
    for j in range(shape[0]):
        theirs = imputer(torch.from_numpy(images[j]), torch.from_numpy((~removed[j]).astype(np.float32))).numpy()
        np.testing.assert_allclose(ours[j], theirs, atol=1e-5)
        np.testing.assert_array_equal(ours[j][:, ~removed[j]], images[j][:, ~removed[j]])
