"""repint.scoring and repint.scoretable: the per-image columns of every metric on a tiny linear model
and their summaries split by RI's coverage, against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from repint.ranking import distinct_polytopes
from repint.results import Results
from repint.scoretable import per_class_markdown, score_rows, scores_markdown, scores_text
from repint.scoring import ScoreSettings, metric_keys, per_image_columns, score_images, summarise_scores

ALL = ScoreSettings(("ad-ai", "deletion-insertion", "road", "representativeness"), (0.25, 0.5), 2, ("black",))


def _linear(w: list[float]) -> nn.Module:
    """Logits ``[<w, x>, 0]`` of a 1x2x2 image: ``softmax_0 = 1 / (1 + exp(-<w, x>))``."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([w, [0.0] * 4]))
    return net.eval()


def _forward(net: nn.Module):  # noqa: ANN202
    def forward(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.as_tensor(x, dtype=torch.float32)).numpy()
    return forward


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def test_score_images_by_hand():
    """Image [[1, 1], [1, 1]], w = [2, 1, 0, -1], the map ranks pixels 0 > 1 > 2 > 3.
    Kept 25% (pixel 0): <w, x> = 2; 50% (pixels 0, 1): 3. Deletion over black, 2 steps (0, 2, 4 pixels
    removed): 2, 0 (pixels 2, 3 left: 0 - 1 = -1), 0 -> z = 2, -1, 0. Insertion: 0, 3, 2."""
    net = _forward(_linear([2.0, 1.0, 0.0, -1.0]))
    images = np.ones((1, 1, 2, 2), np.float32)
    maps = np.array([[[4.0, 3.0], [2.0, 1.0]]], np.float32)
    masks = np.stack([maps > 3.5, maps > 2.5])  # the top 1 and top 2 pixels
    y = np.array([sigmoid(2.0)])
    out = score_images(net, images, np.array([0]), y, maps, masks, ALL)
    np.testing.assert_allclose(out["y_kept"], [[sigmoid(2.0), sigmoid(3.0)]], rtol=1e-6)
    np.testing.assert_allclose(out["curves"][0, 0], [sigmoid(2.0), sigmoid(-1.0), sigmoid(0.0)], rtol=1e-6)
    np.testing.assert_allclose(out["curves"][0, 1], [sigmoid(0.0), sigmoid(3.0), sigmoid(2.0)], rtol=1e-6)
    assert out["thumb"].shape == (1, 2, 2) and out["road_keep"].shape == (1, 2)
    # a constant image imputes to itself (plus 0.01 noise): ROAD leaves its probability almost unchanged
    np.testing.assert_allclose(out["road_keep"], sigmoid(2.0), atol=0.01)
    np.testing.assert_allclose(out["road_remove"], sigmoid(2.0), atol=0.01)


def test_unselected_metrics_are_zero_wide():
    s = ScoreSettings(("ad-ai",), (0.5,), 4, ("black", "blur"))
    assert s.sizes(8, 8) == {"F": 1, "G": 0, "T": 0, "th": 0, "tw": 0}
    assert metric_keys(s) == ["mAD", "mAI", "AD@50", "AI@50"]
    assert ALL.sizes(32, 20) == {"F": 2, "G": 2, "T": 3, "th": 16, "tw": 16}


def _records() -> dict[str, np.ndarray]:
    """Three images: Y = .8, .5, .4; Y' (20%) = .4, .6, .2; kept 25%: .8, .25, .1; deletion curves
    [1, .5, 0], [1, 1, 1], [0, 0, 0] (AUC .5, 1, 0); RI covers images 0 and 2."""
    return {"y": np.array([0.8, 0.5, 0.4]), "y_masked": np.array([0.4, 0.6, 0.2]),
            "y_kept": np.array([[0.8, 0.8], [0.25, 0.25], [0.1, 0.1]]),
            "road_keep": np.array([[0.4, 0.4], [0.5, 0.5], [0.4, 0.4]]),
            "road_remove": np.array([[0.0, 0.0], [0.25, 0.25], [0.4, 0.4]]),
            "curves": np.array([[[1, 0.5, 0], [0, 0.5, 1]], [[1, 1, 1], [0, 0, 1]], [[0, 0, 0], [0, 0, 0]]], float),
            "thumb": np.array([[[1, 2], [3, 4]], [[1, 2], [3, 4]], [[4, 3], [2, 1]]], np.float32),
            "centre": np.array([0, 0, 1])}


def test_summary_split_by_coverage_by_hand():
    covered = np.array([True, False, True])
    s = summarise_scores(_records(), covered, np.array([3, 3, 5]), ALL)
    m = s["metrics"]
    # AD: drops .5, 0, .5 -> all 100/3, covered 50, uncovered 0; AI: only image 1 rises
    assert m["mAD"] == pytest.approx({"all": 100 / 3, "covered": 50.0, "uncovered": 0.0})
    assert m["mAI"] == pytest.approx({"all": 100 / 3, "covered": 0.0, "uncovered": 100.0})
    # kept 25%: drops 0, .5, .75
    assert m["AD@25"] == pytest.approx({"all": 125 / 3, "covered": 37.5, "uncovered": 50.0})
    assert m["deletion-black"] == pytest.approx({"all": 50.0, "covered": 25.0, "uncovered": 100.0})
    assert m["insertion-black"]["all"] == pytest.approx(100 * (0.5 + 0.25 + 0) / 3)
    # ROAD remove: drops 1, .5, 0
    assert m["ROAD-remove@50"] == pytest.approx({"all": 50.0, "covered": 50.0, "uncovered": 50.0})
    # images 0 and 1 share centre 0 with identical maps (rho 1); centre 1 has one image: no pair
    assert m["rank-agreement"]["all"] == pytest.approx(1.0)
    assert m["rank-agreement"]["covered"] is None  # images 0 (centre 0) and 2 (centre 1): no pair
    assert s["n_covered"] == 2 and s["n_uncovered"] == 1
    assert s["per_class"]["5"]["mAD"] == pytest.approx(50.0) and s["per_class"]["3"]["mAD"] == pytest.approx(25.0)
    cols = per_image_columns(_records(), ALL)
    np.testing.assert_allclose(cols["AUC_deletion-black"], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(cols["Y_ROAD-remove@25"], [0.0, 0.25, 0.4])


def test_tables_show_every_split_and_direction():
    covered = np.array([True, False, True])
    ri = {"mAD": 1.0, "mAI": 2.0, "n": 3, **summarise_scores(_records(), covered, np.array([3, 3, 5]), ALL)}
    res = Results.from_methods({"RI": ri, "Grad-CAM": ri})
    rows = score_rows(res)
    assert [(r["method"], r["split"]) for r in rows] == [
        (m, s) for m in ("RI", "Grad-CAM") for s in ("all (3)", "covered (2)", "uncovered (1)")]
    assert rows[1]["mAD ↓"] == "50.00" and rows[2]["mAI ↑"] == "100.00"
    assert rows[0]["rank-agreement ↑"] == "1.000" and rows[1]["rank-agreement ↑"] == "–"
    md = scores_markdown(res)
    assert md.splitlines()[0].startswith("| method | split | mAD ↓ | mAI ↑ | AD@25 ↓")
    assert len(md.splitlines()) == 2 + 6
    assert "covered (2)" in scores_text(res) and "| 5 | RI | 50.00" in per_class_markdown(res)
    assert scores_text(Results.from_methods({"RI": {"mAD": 1.0, "mAI": 2.0}})) == ""  # an old summary


def test_distinct_polytopes():
    covered = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1], [0, 0, 0], [0, 1, 0]], bool)
    assert distinct_polytopes(covered).tolist() == [0, 1, 0, 3, 1]
    assert distinct_polytopes(row for row in covered).tolist() == [0, 1, 0, 3, 1]  # rows one by one, as stores give
    assert distinct_polytopes([[1, 0, 0, 0, 0, 0, 0, 0], [1]]).tolist() == [0, 1]  # equal packed bytes, other sizes


def test_road_keep_and_remove_on_a_ramp_by_hand():
    """A 3x3 ramp x[r, c] = c whose map puts the centre first, w = 1 at pixel (0, 0) only (z = x[0, 0]).
    Keeping 1/9 (the centre, value 1) imputes every other pixel from it: x[0, 0] -> 1, z = 1.
    Removing the centre imputes it from its neighbours and leaves x[0, 0] = 0: z = 0. ROAD's noise is
    0.01, so both within 0.01 of the hand values; swapping keep and remove would give 0 and 1."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(9, 2, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0] + [0.0] * 8, [0.0] * 9]))
    images = np.tile(np.arange(3, dtype=np.float32), (3, 1))[None, None]
    maps = np.zeros((1, 3, 3), np.float32)
    maps[0, 1, 1] = 1.0
    settings = ScoreSettings(("road",), (1 / 9,), 2, ("black",))
    out = score_images(_forward(net.eval()), images, np.array([0]), np.array([0.5]), maps, (maps > 0.5)[None],
                       settings)
    assert out["road_keep"][0, 0] == pytest.approx(sigmoid(1.0), abs=0.01)
    assert out["road_remove"][0, 0] == pytest.approx(sigmoid(0.0), abs=0.01)
    again = score_images(_forward(net.eval()), images, np.array([0]), np.array([0.5]), maps, (maps > 0.5)[None],
                         settings, first=7)  # another image index: other noise, same values within it
    assert again["road_keep"][0, 0] != out["road_keep"][0, 0]
    assert again["road_keep"][0, 0] == pytest.approx(sigmoid(1.0), abs=0.01)
