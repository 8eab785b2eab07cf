"""Channel weights of boundaries and the Grad-CAM-like maps (Sec. 5.1), by hand."""

from __future__ import annotations

import numpy as np
import torch

from repint.heatmaps import boundary_channel_weights, cam_maps, normalise_maps

# Two boundaries, K = 2 channels of 2 x 2.
#   W0: channel 0 [[1, 2], [3, 4]]     mean  2.5     channel 1 [[-1, -1], [1, -3]]  mean -1
#   W1: channel 0 [[0, 0], [0, 4]]     mean  1       channel 1 [[2, 2], [2, 2]]     mean  2
W = np.array([
    [[[1, 2], [3, 4]], [[-1, -1], [1, -3]]],
    [[[0, 0], [0, 4]], [[2, 2], [2, 2]]],
], dtype=np.float32)
# ψ(x): channel 0 [[1, 0], [0, 0]], channel 1 [[0, 0], [0, 1]]
PSI_X = np.array([[[1, 0], [0, 0]], [[0, 0], [0, 1]]], dtype=np.float32)
# <W0, ψ(x)> = 1·1 + (-3)·1 = -2, b0 = 1  -> -1 < 0: flipped -> α0 = (-2.5, 1)
# <W1, ψ(x)> = 0 + 2·1 = 2,       b1 = -1 ->  1 > 0: kept    -> α1 = (1, 2)
B = np.array([1.0, -1.0])


def test_boundary_channel_weights_oriented():
    alpha = boundary_channel_weights(W, B, PSI_X)
    np.testing.assert_allclose(alpha, [[-2.5, 1.0], [1.0, 2.0]], atol=1e-12)


def test_boundary_channel_weights_unoriented():
    alpha = boundary_channel_weights(W, B, PSI_X, orient=False)
    np.testing.assert_allclose(alpha, [[2.5, -1.0], [1.0, 2.0]], atol=1e-12)


def test_boundary_channel_weights_flat_w():
    # W given flattened [P, K*h*w] (as stored) gives the same weights.
    np.testing.assert_allclose(boundary_channel_weights(W.reshape(2, -1), B, PSI_X), [[-2.5, 1.0], [1.0, 2.0]])
    # With b0 = 3, <W0, ψ(x)> + b0 = -2 + 3 = 1 > 0: W0 is no longer flipped.
    np.testing.assert_allclose(boundary_channel_weights(W, np.array([3.0, -1.0]), PSI_X),
                               [[2.5, -1.0], [1.0, 2.0]])


# Feature maps of one image, K = 2, 2 x 2:  channel 0 [[3, 1], [0, 2]], channel 1 [[1, 0], [2, 0]].
FEAT = np.array([[[[3, 1], [0, 2]], [[1, 0], [2, 0]]]], dtype=np.float32)


def test_cam_map_single_boundary_no_upsampling():
    # α = (1, -1): raw = ch0 - ch1 = [[2, 1], [-2, 2]] -> ReLU [[2, 1], [0, 2]] -> /2 -> [[1, .5], [0, 1]]
    m = cam_maps(np.array([1.0, -1.0]), FEAT, size=(2, 2))
    assert m.shape == (1, 2, 2)
    np.testing.assert_allclose(m[0], [[1.0, 0.5], [0.0, 1.0]], atol=1e-6)


def test_cam_map_of_polytope_is_mean_of_normalised_maps():
    # α1 = (1, -1): [[1, .5], [0, 1]] as above.
    # α2 = (0, 1):  raw = ch1 = [[1, 0], [2, 0]] -> /2 -> [[.5, 0], [1, 0]]
    # mean: [[.75, .25], [.5, .5]]  (not the normalised mean of raw maps, which would be
    # [[3, 1], [2, 2]] -> [[1, 0], [.5, .5]])
    m = cam_maps(np.array([[1.0, -1.0], [0.0, 1.0]]), FEAT, size=(2, 2))
    np.testing.assert_allclose(m[0], [[0.75, 0.25], [0.5, 0.5]], atol=1e-6)


def test_cam_map_all_zero_stays_zero():
    # Image 2: all features 0. Image 3: α·ψ < 0 everywhere -> ReLU gives 0. Both stay 0 (not NaN).
    feats = np.concatenate([FEAT, np.zeros_like(FEAT), np.stack([-FEAT[0, 0], FEAT[0, 1] * 0])[None]])
    m = cam_maps(np.array([[1.0, 0.0]]), feats, size=(2, 2))
    assert m.shape == (3, 2, 2)
    np.testing.assert_allclose(m[0], [[1.0, 1 / 3], [0.0, 2 / 3]], atol=1e-6)  # ch0 / 3
    assert not np.isnan(m).any()
    assert (m[1:] == 0).all()


def test_cam_map_upsampled():
    # raw = [[0, 0], [0, 5]] upsampled 2 -> 8 bilinearly (align_corners=False): output row i samples
    # source coordinate (i + 0.5) / 4 - 0.5, clamped to [0, 1]. Rows/cols 0, 1 -> 0 (value 0);
    # rows/cols 6, 7 -> 1 (value 5, the max, first at (6, 6)); row/col 5 -> 0.875, value
    # 5 · 0.875² = 3.828125, normalised 0.765625.
    feats = np.array([[[[0, 0], [0, 5]]]], dtype=np.float32)
    m = cam_maps(np.array([[1.0]]), feats, size=(8, 8))[0]
    assert m.shape == (8, 8)
    assert m.min() == 0.0 and m.max() == 1.0
    assert np.unravel_index(np.argmax(m), m.shape) == (6, 6)
    assert m[7, 7] == 1.0 and m[0, 0] == 0.0 and m[1, 7] == 0.0
    np.testing.assert_allclose(m[5, 5], 0.765625, atol=1e-6)


def test_normalise_maps():
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[4.0, 4.0], [4.0, 4.0]]])
    # map 0: (x - 1) / 4; map 1 constant -> 0
    np.testing.assert_allclose(normalise_maps(maps).numpy(), [[[0, 0.5], [0.25, 1]], [[0, 0], [0, 0]]])


def test_spatial_maps_of_ri_exact_by_hand():
    from repint.heatmaps import oriented_boundaries, spatial_maps

    W = np.array([[[1.0, -1.0], [2.0, 0.0]]])  # one boundary, K = 1, h = w = 2
    ones = np.ones((1, 1, 2, 2))
    # <W, ψ(x)> + b = 2 > 0: kept as it is; ReLU(W * ψ(x')) = [[1, 0], [2, 0]] -> normalised
    Wo = oriented_boundaries(W.reshape(1, -1), np.zeros(1), ones[0]).reshape(1, 1, 2, 2)
    np.testing.assert_allclose(spatial_maps(Wo, ones, (2, 2))[0], [[0.5, 0.0], [1.0, 0.0]])
    # b = -3 puts x on the negative side: flipped, ReLU(-W) = [[0, 1], [0, 0]]
    Wo = oriented_boundaries(W.reshape(1, -1), np.array([-3.0]), ones[0]).reshape(1, 1, 2, 2)
    np.testing.assert_allclose(spatial_maps(Wo, ones, (2, 2))[0], [[0.0, 1.0], [0.0, 0.0]])
    # the channel-mean map of Sec. 5.1 cannot tell the positions apart here: α = 0.5 everywhere
    from repint.heatmaps import boundary_channel_weights, cam_maps

    alpha = boundary_channel_weights(W.reshape(1, -1), np.zeros(1), ones[0])
    np.testing.assert_allclose(alpha, [[0.5]])
    np.testing.assert_allclose(cam_maps(alpha, ones, (2, 2))[0], np.zeros((2, 2)))  # constant map -> zero


def test_ri_exact_reuses_the_oriented_normals_of_the_polytope():
    from repint.methods import InterpretationInput, get_method

    m = get_method("RI-exact")
    assert m.uses_polytope and get_method("RI").uses_polytope and not get_method("Grad-CAM").uses_polytope
    psi_x = np.ones((1, 2, 2))
    W = np.array([[1.0, -1.0, 2.0, 0.0], [0.0, 0.0, 0.0, -1.0]])
    inp = InterpretationInput(model=None, layer="", image=np.zeros((3, 2, 2)), features=psi_x, predicted_class=0,
                              boundaries_W=W, boundaries_b=np.zeros(2))
    interp = m.interpret(inp)
    # the second boundary: <W, ψ(x)> = -1 < 0 -> flipped to [0, 0, 0, 1]
    np.testing.assert_allclose(interp["W"].reshape(2, 4), [[1, -1, 2, 0], [0, 0, 0, 1]])
    maps = m.heatmaps(interp, np.zeros((1, 3, 2, 2)), np.ones((1, 1, 2, 2)))
    np.testing.assert_allclose(maps[0], ([[0.5, 0.0], [1.0, 0.0]] + np.array([[0, 0], [0, 1.0]])) / 2)
