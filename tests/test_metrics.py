"""Exact top-20% masking and Average Drop / Average Increase, by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from repint.metrics import AverageDropIncrease, keep_count, keep_top_fraction, mask_images, softmax


@pytest.mark.parametrize(("h", "w", "k"), [
    (32, 32, 205),      # 0.2 · 1024 = 204.8
    (128, 128, 3277),   # 0.2 · 16384 = 3276.8
    (224, 224, 10035),  # 0.2 · 50176 = 10035.2
    (4, 5, 4),          # 0.2 · 20 = 4
    (3, 3, 2),          # 0.2 · 9 = 1.8
    (1, 2, 0),          # 0.2 · 2 = 0.4
])
def test_keep_count(h, w, k):
    assert keep_count(h, w) == k


def test_keep_count_other_fraction():
    assert keep_count(10, 10, 0.5) == 50
    assert keep_count(3, 3, 0.5) == 5  # 4.5: halves round up


def test_keep_top_fraction_distinct_values():
    # 5 x 5, k = 5: the five largest values 24, 23, 22, 21, 20 sit at (0,0), (1,1), (2,2), (3,3), (4,4)
    # of a map that is otherwise 0..19.
    m = np.zeros((5, 5))
    rest = iter(range(20))
    for i in range(5):
        for j in range(5):
            m[i, j] = 24 - i if i == j else next(rest)
    keep = keep_top_fraction(m[None])
    assert keep.shape == (1, 5, 5) and keep.dtype == bool
    assert keep[0].tolist() == np.eye(5, dtype=bool).tolist()


def test_keep_top_fraction_constant_map_keeps_first_pixels():
    # 4 x 4, k = round(3.2) = 3, all equal: the first 3 pixels in row-major order.
    keep = keep_top_fraction(np.full((2, 4, 4), 0.5, dtype=np.float32))
    expected = np.zeros((4, 4), dtype=bool)
    expected[0, :3] = True
    assert keep[0].tolist() == expected.tolist()
    assert keep[1].tolist() == expected.tolist()


def test_keep_top_fraction_many_ties_at_full_size():
    # 32 x 32, k = 205: the last row is 1.0 (32 pixels, all kept), everything else ties at 0.5, so
    # the remaining 173 go to the lowest pixel indices: rows 0-4 (160 pixels) and row 5, columns 0-12.
    m = np.full((1, 32, 32), 0.5)
    m[0, -1] = 1.0
    keep = keep_top_fraction(m)[0]
    expected = np.zeros((32, 32), dtype=bool)
    expected[-1] = True
    expected[:5] = True
    expected[5, :13] = True
    assert keep.sum() == 205
    assert np.array_equal(keep, expected)


def test_keep_top_fraction_ties_at_the_threshold():
    # 3 x 3, k = 2. Values (row-major): .5 .9 .5 / .9 .1 .9 / 0 0 0. Three pixels tie at .9 (indices
    # 1, 3, 5): exactly two are kept, the lowest indices 1 and 3.
    m = np.array([[[0.5, 0.9, 0.5], [0.9, 0.1, 0.9], [0.0, 0.0, 0.0]]])
    keep = keep_top_fraction(m)
    assert keep.sum() == 2
    assert np.flatnonzero(keep[0]).tolist() == [1, 3]
    # 1 at index 4, then .5 ties at 0, 2 and 6: the lowest, 0, is kept with it.
    m = np.array([[[0.5, 0.0, 0.5], [0.0, 1.0, 0.0], [0.5, 0.0, 0.0]]])
    assert np.flatnonzero(keep_top_fraction(m)[0]).tolist() == [0, 4]


def test_mask_images_zeroes_every_channel_outside():
    images = np.arange(1, 1 + 2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    keep = np.array([[[True, False], [False, True]], [[False, False], [True, False]]])
    out = mask_images(images, keep)
    assert out.dtype == np.float32
    # image 0 keeps (0,0) and (1,1) in each of its 3 channels; image 1 keeps only (1,0).
    np.testing.assert_array_equal(out[0, 0], [[1, 0], [0, 4]])
    np.testing.assert_array_equal(out[0, 2], [[9, 0], [0, 12]])
    np.testing.assert_array_equal(out[1, 1], [[0, 0], [19, 0]])
    assert (out[1] != 0).sum() == 3
    assert images[0, 0, 0, 1] == 2  # the input is not modified
    assert mask_images(images.astype(np.uint8), keep).dtype == np.uint8


def test_average_drop_increase_hand_values():
    m = AverageDropIncrease()
    assert m.summary()["n"] == 0 and np.isnan(m.summary()["AD"])
    # batch 1: drop (0.5 - 0.25) / 0.5 = 0.5;  0.8 -> 0.9 is an increase, drop 0.
    m.update(np.array([0.5, 0.8]), np.array([0.25, 0.9]))
    # batch 2: 0.4 -> 0.4: neither a drop nor an increase (strict <).
    m.update(np.array([0.4]), np.array([0.4]))
    s = m.summary()
    assert s["n"] == 3
    assert s["AD"] == pytest.approx(100 * 0.5 / 3)   # 16.67
    assert s["AI"] == pytest.approx(100 * 1 / 3)     # 33.33
    m.reset()
    assert m.summary()["n"] == 0
    m.update([0.2], [0.05])  # (0.2 - 0.05) / 0.2 = 0.75
    assert m.summary()["AD"] == pytest.approx(75.0)
    assert m.summary()["AI"] == 0.0


def test_average_drop_increase_rejects_bad_input():
    m = AverageDropIncrease()
    with pytest.raises(ValueError, match="differ in shape"):
        m.update(np.array([0.5, 0.5]), np.array([0.5]))
    with pytest.raises(ValueError, match="positive"):
        m.update(np.array([0.0]), np.array([0.5]))


class SumModel(nn.Module):
    """logits = (sum of all pixels, 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.sum(dim=(1, 2, 3))
        return torch.stack([s, torch.full_like(s, 2.0)], dim=1)


def test_ad_ai_through_a_model_with_known_outputs():
    # Images 1 x 4 x 5 (20 pixels): k = 4 pixels kept.
    # e1: 0.75 on the diagonal (0,0), (1,1), (2,2), (3,3), 0.0625 elsewhere (16 pixels): sum 3 + 1 = 4.
    #     logits (4, 2): class 0, Y = 1 / (1 + e^-2) = 0.880797. Map = e1 -> keeps the four 0.75s,
    #     sum 3: Y' = 1 / (1 + e^-1) = 0.731059. Drop (0.880797 - 0.731059) / 0.880797 = 0.170003.
    # e2: 0.125 at (0,0)..(0,3), 0.03125 elsewhere: sum 0.5 + 0.5 = 1. logits (1, 2): class 1,
    #     Y = 1 / (1 + e^-1) = 0.731059. Map constant -> ties keep the first 4 pixels = the 0.125s:
    #     sum 0.5, logits (0.5, 2): Y' = 1 / (1 + e^-1.5) = 0.817574 > Y: an increase, drop 0.
    # AD = 100 · (0.170003 + 0) / 2 = 8.50017, AI = 100 · 1 / 2 = 50.
    e = np.zeros((2, 1, 4, 5), dtype=np.float32)
    e[0, 0] = 0.0625
    e[0, 0, [0, 1, 2, 3], [0, 1, 2, 3]] = 0.75
    e[1, 0] = 0.03125
    e[1, 0, 0, :4] = 0.125
    maps = np.stack([e[0, 0], np.full((4, 5), 0.3, dtype=np.float32)])
    model = SumModel()
    with torch.no_grad():
        p = torch.softmax(model(torch.from_numpy(e)), dim=1).numpy()
        c = p.argmax(1)
        assert c.tolist() == [0, 1]
        keep = keep_top_fraction(maps)
        assert keep.sum(axis=(1, 2)).tolist() == [4, 4]
        pm = torch.softmax(model(torch.from_numpy(mask_images(e, keep))), dim=1).numpy()
    y, ym = p[[0, 1], c], pm[[0, 1], c]
    np.testing.assert_allclose(y, [0.8807970780, 0.7310585786], rtol=1e-6)
    np.testing.assert_allclose(ym, [0.7310585786, 0.8175744762], rtol=1e-6)
    m = AverageDropIncrease()
    m.update(y, ym)
    s = m.summary()
    assert s["AD"] == pytest.approx(8.50017007842739, rel=1e-5)
    assert s["AI"] == 50.0


def test_softmax_by_hand():
    np.testing.assert_array_equal(softmax(np.zeros((1, 4))), [[0.25] * 4])
    np.testing.assert_allclose(softmax(np.array([[0.0, np.log(3.0)]])), [[0.25, 0.75]], rtol=1e-15)
    # e^1 / (e^1 + e^0 + e^-1) etc., row by row
    e = np.exp([1.0, 0.0, -1.0])
    np.testing.assert_allclose(softmax(np.array([[1.0, 0.0, -1.0], [-1.0, 0.0, 1.0]])),
                               [e / e.sum(), e[::-1] / e.sum()], rtol=1e-15)


def test_softmax_is_stable_and_float64():
    p = softmax(np.array([[1000.0, 1000.0, -1000.0]], np.float32))  # exp(1000) would overflow
    assert p.dtype == np.float64
    np.testing.assert_array_equal(p, [[0.5, 0.5, 0.0]])


@settings(max_examples=100, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 6)),
              elements=st.floats(-1e4, 1e4, width=32)))
def test_softmax_properties(logits):
    p = softmax(logits)
    assert p.dtype == np.float64 and p.shape == logits.shape
    assert ((p >= 0) & (p <= 1)).all()
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-12)
    rows = np.arange(len(p))
    assert (p[rows, logits.argmax(1)] == p.max(1)).all()  # the predicted class has the largest Y
    # shifting each row so that its maximum is 0 is what softmax does first: the same numbers, bit for bit
    np.testing.assert_array_equal(softmax(logits - logits.max(1, keepdims=True)), p)
    np.testing.assert_allclose(p, torch.softmax(torch.from_numpy(logits.astype(np.float64)), 1).numpy(),
                               rtol=1e-5, atol=1e-12)
