"""Drift report pieces by hand, and versions that are never overwritten."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from repint.drift import jaccard_matrix, match_centres, pearson_rows
from repint.tasks.versions import add_version, pending_version, read_index, start_version


def test_jaccard_by_hand():
    a = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]], bool)
    b = np.array([[1, 0, 0, 0], [0, 1, 1, 1]], bool)
    # a0 = {0, 1}, a1 = {2, 3}, a2 = {}; b0 = {0}, b1 = {1, 2, 3}
    expected = np.array([[1 / 2, 1 / 4], [0, 2 / 3], [0, 0]])
    np.testing.assert_allclose(jaccard_matrix(a, b), expected)


@settings(max_examples=50, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 6), st.integers(1, 12))))
def test_jaccard_properties(a):
    j = jaccard_matrix(a, a)
    np.testing.assert_allclose(j, j.T)
    assert ((j >= 0) & (j <= 1)).all()
    nonempty = a.any(1)
    np.testing.assert_allclose(np.diag(j)[nonempty], 1.0)


def test_match_centres_is_one_to_one_within_class():
    # new centres 0, 1 (class 0) and 2 (class 1); previous 0, 1 (class 0), 2 (class 1)
    j = np.array([[0.9, 0.8, 0.99],
                  [0.85, 0.1, 0.0],
                  [0.0, 0.0, 0.4]])
    m = match_centres(j, np.array([0, 0, 1]), np.array([0, 0, 1]))
    # greedy would give new 0 -> prev 0 and leave new 1 with prev 1 (total 1.0); the assignment
    # maximises the total: new 0 -> prev 1, new 1 -> prev 0 (0.8 + 0.85 = 1.65); never across classes
    assert m == [1, 0, 2]


def test_match_centres_leaves_extra_centres_unmatched():
    j = np.array([[0.5], [0.7]])
    assert match_centres(j, np.array([3, 3]), np.array([3])) == [None, 0]


def test_pearson_rows_by_hand():
    a = np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    b = np.array([[2.0, 4.0, 6.0], [1.0, 2.0, 3.0], [1.0, 0.0, 1.0]])
    r = pearson_rows(a, b)
    assert r[0] == pytest.approx(1.0)
    assert np.isnan(r[1])  # a constant map has no correlation
    assert r[2] == pytest.approx(-1.0)


def test_versions_never_reuse_a_listed_folder(tmp_path):
    fp1, fp2 = {"model": "a", "data": "d", "settings": "s"}, {"model": "b", "data": "d", "settings": "s"}
    assert pending_version(tmp_path, [], fp1) == 1
    start_version(tmp_path, 1, fp1)
    # a run that died before listing v0001 is resumed with the same inputs, not with other inputs
    assert pending_version(tmp_path, read_index(tmp_path), fp1) == 1
    assert pending_version(tmp_path, read_index(tmp_path), fp2) == 2
    add_version(tmp_path, {"version": 1, "fingerprints": fp1, "out_dir": str(tmp_path / "v0001")})
    assert pending_version(tmp_path, read_index(tmp_path), fp1) == 2  # listed: never written again
    index = json.loads((tmp_path / "versions.json").read_text())
    assert [v["version"] for v in index["versions"]] == [1] and "created" in index["versions"][0]
    assert not list(tmp_path.glob(".versions.json.*.tmp"))


def test_a_broken_index_is_an_error_that_says_what_to_do(tmp_path):
    (tmp_path / "versions.json").write_text("{not json")
    with pytest.raises(ValueError, match="move it away"):
        read_index(tmp_path)
