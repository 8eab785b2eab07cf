"""ACE's parts: segments, patches, the concept filter, TCAV scores, and whole-segment masks."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from repint.methods import get_method
from repint.methods.ace import MEAN_COLOUR, keep_concept, patches, segments, tcav_score


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((3, 24, 24), 0.1, dtype=np.float32)
    img[:, 2:10, 2:12] = [[[0.9]], [[0.2]], [[0.2]]]  # a red block
    img[:, 14:22, 10:20] = [[[0.1]], [[0.2]], [[0.9]]]  # a blue block
    return np.clip(img + 0.02 * rng.standard_normal(img.shape), 0, 1).astype(np.float32)


def test_segments_are_large_enough_and_multi_resolution():
    img = _image()
    masks = segments(img)
    assert masks.dtype == bool and masks.shape[1:] == (24, 24)
    assert (masks.mean(axis=(1, 2)) >= 0.01).all()
    # three resolutions: every pixel is covered by at least one segment of each resolution
    assert masks.sum(0).min() >= 1 and len(masks) > len(segments(img, resolutions=(15,)))


def test_patch_keeps_segment_pixels_on_the_mean_colour():
    img = _image()
    m = np.zeros((24, 24), dtype=bool)
    m[0:12, 0:12] = True  # a square box: the crop is the box itself, resized 12 -> 24
    m[0:2, 0:2] = False   # ... minus a corner, which becomes the mean colour
    p = patches(img, m[None])[0]
    assert p.shape == (3, 24, 24)
    np.testing.assert_allclose(p[:, 0, 0], MEAN_COLOUR, atol=1e-6)
    np.testing.assert_allclose(p[:, 12, 12], img[:, 6, 6], atol=0.05)  # inside the red block, scaled x2


def test_concept_filter_follows_ace():
    # 10 discovery images; a concept of 6 segments from 4 images is highly common (4 > 0.5 * 6)
    assert keep_concept(np.array([0, 0, 1, 2, 3, 3]), n_images=10, min_size=4)
    # 8 segments from 2 images: not highly common (2 <= 4), 2 > 0.25*8 fails -> only "populated"
    # (2 > 0.8 and 8 > 0.5*10): kept
    assert keep_concept(np.array([0] * 4 + [1] * 4), n_images=10, min_size=4)
    # the same 8 segments with 20 discovery images: not populated enough -> dropped
    assert not keep_concept(np.array([0] * 4 + [1] * 4), n_images=20, min_size=4)
    assert not keep_concept(np.array([0, 1, 2]), n_images=10, min_size=4)  # too small


def test_tcav_score_is_the_fraction_of_positive_directional_derivatives():
    grads = np.array([[1.0, 0.0], [0.5, -2.0], [-1.0, 0.1], [2.0, 1.0]])
    cav = np.array([1.0, 0.0])
    assert tcav_score(cav, grads) == 0.75  # 1, 0.5, -1, 2 -> three positive
    assert tcav_score(np.array([0.0, 1.0]), grads) == 0.5  # 0, -2, 0.1, 1 -> two positive


def test_keep_masks_add_whole_segments_by_importance_until_over_the_fraction():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(16, 2)).eval()
    ace = get_method("ACE").bind(model, "1")
    img = _image()
    masks = segments(img)
    acts = ace._acts(patches(img, masks))
    # two concepts: the activations of segments 0 and 1, segment 1's concept more important
    interp = {"concepts": acts[[0, 1]].astype(np.float32), "radii": np.array([1e-6, 1e-6]),
              "importance": np.array([0.2, 0.9])}
    keep = ace.keep_masks(interp, img[None], np.zeros((1, 4, 24, 24)))[0]
    assert keep.mean() > 0.2
    assert keep[masks[1]].all()  # the most important concept's own segment is in
    # only whole segments: every kept pixel belongs to a segment entirely kept
    kept_segments = [m for m in masks if keep[m].all()]
    np.testing.assert_array_equal(np.any(kept_segments, axis=0), keep)


def test_segment_activations_are_cached_and_equal_the_direct_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(16, 2)).eval()
    ace = get_method("ACE").bind(model, "1")
    img = _image(3)
    (masks, acts), = ace.segment_activations(img[None])
    np.testing.assert_array_equal(masks, segments(img))
    direct = ace._acts(patches(img, masks))
    assert direct.shape == (len(masks), 4)  # channel means of the 4 channels
    np.testing.assert_allclose(acts, direct, rtol=1e-6)
    (masks2, acts2), = ace.segment_activations(img[None].copy())  # same bytes: from the cache
    np.testing.assert_array_equal(masks2, masks)
    assert acts2 is acts


def test_tcav_gradients_are_spatial_sums_of_the_class_gradient():
    from repint.methods.ace import _class_gradients

    torch.manual_seed(0)
    lin = nn.Linear(4 * 6 * 6, 3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(), lin).eval()
    images = np.random.default_rng(0).random((2, 3, 24, 24)).astype(np.float32)
    g = _class_gradients(model, "1", images, target=2)
    # ψ = ReLU output [4, 24, 24]; the head is maxpool -> linear, so ∂y/∂ψ is W at each window's argmax
    expected = []
    for img in images:
        psi = torch.relu(model[0](torch.as_tensor(img[None]))).requires_grad_(True)
        (grad,) = torch.autograd.grad(lin(nn.functional.max_pool2d(psi, 4).flatten(1))[0, 2], psi)
        expected.append(grad[0].sum(dim=(1, 2)).numpy())
    np.testing.assert_allclose(g, np.array(expected), rtol=1e-5, atol=1e-6)
    # and summed over each channel the weights of class 2 (one argmax per pooling window)
    np.testing.assert_allclose(g[0], lin.weight[2].detach().reshape(4, 36).sum(1).numpy(), rtol=1e-5, atol=1e-6)
