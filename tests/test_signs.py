"""Sign bits ``s_h(x') = <W_h, ψ(x')> + b_h > 0`` and their packing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from repint.signs import pack_signs, packed_columns, select_signs, sign_bits, sign_matrix, unpack_signs

# Two boundaries in R^2:  h0: u1 + 2 u2 - 1,   h1: -u1 + 0.5
W = np.array([[1.0, 2.0], [-1.0, 0.0]], dtype=np.float32)
B = np.array([-1.0, 0.5])
# x0 = (1, 0):  h0 = 1 - 1 = 0 (exactly on it: not > 0 -> False);  h1 = -1 + 0.5 = -0.5 -> False
# x1 = (0, 1):  h0 = 2 - 1 = 1 -> True;                             h1 = 0.5 -> True
# x2 = (-2, 0): h0 = -2 - 1 = -3 -> False;                          h1 = 2 + 0.5 = 2.5 -> True
FEATURES = np.array([[1.0, 0.0], [0.0, 1.0], [-2.0, 0.0]], dtype=np.float32)
EXPECTED = [[False, False], [True, True], [False, True]]


def test_sign_matrix_hand_values():
    s = sign_matrix(FEATURES, W, B)
    assert s.dtype == bool
    assert s.tolist() == EXPECTED


def test_sign_matrix_flattens_feature_maps():
    # The same features as [n, 1, 1, 2] maps.
    assert sign_matrix(FEATURES.reshape(3, 1, 1, 2), W, B).tolist() == EXPECTED


def test_sign_matrix_dimension_mismatch():
    with pytest.raises(ValueError, match="3 dimensions but boundaries have 2"):
        sign_matrix(np.zeros((2, 3)), W, B)


def test_packing_bit_order_is_little():
    # Bit j of byte k is boundary 8k + j.
    # Row 0: boundaries 0, 8, 9 set -> byte0 = 0b00000001 = 1, byte1 = 0b00000011 = 3.
    # Row 1: boundaries 1, 3, 7     -> byte0 = 2 + 8 + 128 = 138, byte1 = 0.
    signs = np.zeros((2, 10), dtype=bool)
    signs[0, [0, 8, 9]] = True
    signs[1, [1, 3, 7]] = True
    packed = pack_signs(signs)
    assert packed.dtype == np.uint8
    assert packed.tolist() == [[1, 3], [138, 0]]
    assert unpack_signs(packed, 10).tolist() == signs.tolist()
    # columns 9, 1, 3 of the bytes that hold them only: byte 0 (bits 1, 3) and byte 1 (bit 9)
    assert packed_columns(np.array([9, 1, 3])).tolist() == [0, 1]
    assert select_signs(packed, np.array([0, 1]), np.array([9, 1, 3])).tolist() == [[True, False, False],
                                                                                    [False, True, True]]


def test_sign_bits_is_packed_sign_matrix():
    # EXPECTED rows: [F, F] -> 0, [T, T] -> 1 + 2 = 3, [F, T] -> 2.
    assert sign_bits(FEATURES, W, B).tolist() == [[0], [3], [2]]


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6).flatmap(lambda n: st.integers(0, 70).flatmap(lambda m: arrays(bool, (n, m)))))
def test_pack_unpack_roundtrip(signs):
    packed = pack_signs(signs)
    assert packed.shape == (signs.shape[0], -(-signs.shape[1] // 8))
    out = unpack_signs(packed, signs.shape[1])
    assert out.dtype == bool
    assert np.array_equal(out, signs)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_select_signs_is_unpacking_and_taking_the_columns(data):
    """A solve reads only the bytes of its centre's boundaries (boundary-search: V x q columns, one
    centre's q of them): the same bits as unpacking everything and taking those columns."""
    n, m = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 70))
    signs = data.draw(arrays(bool, (n, m)))
    cols = np.array(data.draw(st.lists(st.integers(0, m - 1), unique=True)), dtype=np.int64)
    byte_cols = packed_columns(cols)
    got = select_signs(pack_signs(signs)[:, byte_cols], byte_cols, cols)
    assert got.shape == (n, len(cols)) and np.array_equal(got, unpack_signs(pack_signs(signs), m)[:, cols])
