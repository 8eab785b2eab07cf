"""Explaining new images with a store's interpretations (``repint.Interpretations``, ``repint explain``, the
``explain`` flow): hand-computed assignments on tiny arrays, and on a real run over a folder of digit PNGs
the explanations of its unseen images equal what the evaluation stored for them (centres, coverage, the
maps' thumbnails, the kept pixels and the model's score of the kept pixels)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

from repint.explain import assign_images, violated_boundaries

# --- the core, by hand ------------------------------------------------------------------------------


def test_assign_images_by_hand():
    """Two centres in 1-D feature space, c0 = 0 (class 0) and c1 = 10 (class 1); three boundaries
    h0: x > 1, h1: x > 5, h2: x > 9 (W = 1, b = -1, -5, -9); P0 = {(h1, False)} (x <= 5), P1 = {(h2, True)} (x > 9).
    e0 = 3, class 0: in P0 -> covered by c0. e1 = 7, class 1: in neither (h2 violated for P1); nearest c1
    (49 vs 9). e2 = 6, class 0: in neither; nearest c1 (36 vs 16), P1 violated at h2; `nearest-same-class`
    gives c0 instead, whose P0 it violates at h1."""
    feats = np.array([[3.0], [7.0], [6.0]])
    W, b = np.ones((3, 1)), np.array([-1.0, -5.0, -9.0])
    signs = feats @ W.T + b > 0
    centres, centre_class = np.array([[0.0], [10.0]]), np.array([0, 1])
    pb, po = np.array([[1], [2]]), np.array([[False], [True]])
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    a = assign_images(feats, logits, signs, centres, centre_class, pb, po, "nearest", uses_polytope=True)
    assert a.interpretation.tolist() == [0, 1, 1]
    assert a.covered.tolist() == [True, False, False] and a.ri_covered.tolist() == [True, False, False]
    assert [v.tolist() for v in a.violated_boundaries] == [[], [2], [2]]
    np.testing.assert_allclose(a.probability, np.exp(2) / (np.exp(2) + 1))
    same = assign_images(feats, logits, signs, centres, centre_class, pb, po, "nearest-same-class", True)
    assert same.interpretation.tolist() == [0, 1, 0] and [v.tolist() for v in same.violated_boundaries][2] == [1]
    base = assign_images(feats, logits, signs, centres, centre_class, pb, po, "nearest", uses_polytope=False)
    assert base.interpretation.tolist() == [0, 1, 1]  # the nearest centre: c0 for 3, c1 for 7 and 6
    assert violated_boundaries(signs, pb, po, np.array([1, 1, 0]))[2].tolist() == [1]


def test_the_public_name():
    import repint
    from repint.storage.interpretations import Interpretations

    assert repint.Interpretations is Interpretations and "Interpretations" in repint.__all__
    with pytest.raises(AttributeError):
        repint.NoSuchThing  # noqa: B018


# --- a real run on a folder of digit PNGs -------------------------------------------------------------

def _write_digits(root: Path, n_ref: int = 150, n_unseen: int = 60) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    for split, idx in (("reference", range(n_ref)), ("unseen", range(n_ref, n_ref + n_unseen))):
        for i in idx:
            folder = root / split / str(int(d.target[i]))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((d.images[i] * 16).clip(0, 255).astype(np.uint8)).save(folder / f"d{i:04d}.png")


@pytest.fixture(scope="module")
def run(prefect_harness, repint_cache, tmp_path_factory):
    from repint.flows import study
    from repint.flows.spec import build_spec

    root = tmp_path_factory.mktemp("explain")
    _write_digits(root)
    cfg = tiny_config(0, 1, 16)
    cfg.data.kind, cfg.data.reference, cfg.data.unseen, cfg.data.image_size = ("imagefolder", str(root / "reference"),
                                                                              str(root / "unseen"), 32)
    cfg.data.limit = None
    cfg.train.epochs = 8
    cfg.evaluation.case_studies = 0
    spec = build_spec(cfg, root / "out")
    study(spec, runs=1)
    return {"root": root, "store": spec.store, "spec": spec}


def _stored(store: str, method: str) -> dict[str, np.ndarray]:
    from repint.storage import FeatureStore
    from repint.variants import Variant

    fs = FeatureStore(store, mode="r")
    key = Variant.parse(method).key
    out = {name: fs.read(f"evaluation/{key}/{name}") for name in ("centre", "covered", "thumb", "kept_fraction",
                                                                     "y_masked")}
    out["ids"] = fs.read("unseen/ids")
    return out


def test_cli_explains_the_unseen_folder_as_the_evaluation_did(run, tmp_path, capsys):
    from repint.app.cli import main

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"not a png")
    (bad / "notes.txt").write_text("not an image")
    out = tmp_path / "explained"
    assert main(["explain", run["store"], str(run["root"] / "unseen"), str(bad), "--out", str(out)]) == 0
    doc = json.loads((out / "explanations.json").read_text())
    stored = _stored(run["store"], "RI")
    assert doc["n_explained"] == len(stored["ids"]) == 60 and doc["n_skipped"] == 2
    assert {s["id"] for s in doc["skipped"]} == {str(bad / "broken.png"), str(bad / "notes.txt")}
    rows = {str(Path(r["image"]).relative_to(run["root"] / "unseen")): r for r in doc["explanations"]}
    order = [rows[i] for i in stored["ids"]]
    assert [r["interpretation"] for r in order] == stored["centre"].tolist()
    assert [r["covered"] for r in order] == stored["covered"].tolist()
    assert all(r["reuse"] == ("covered" if r["covered"] else "fallback") for r in order)
    assert all((r["violated_boundaries"] == []) == r["covered"] for r in order if r["reuse"] == "covered")
    for r in order:
        assert (out / r["png"]).is_file() and Image.open(out / r["png"]).size[0] > 300
    csv_lines = (out / "explanations.csv").read_text().splitlines()
    assert len(csv_lines) == 61 and csv_lines[0].startswith("image,predicted_class")
    assert "explained 60 images by RI" in capsys.readouterr().out
    # results are never overwritten
    assert main(["explain", run["store"], str(run["root"] / "unseen"), "--out", str(out)]) == 2
    assert "already holds explanations.json" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["RI", "Grad-CAM"])
def test_api_gives_the_evaluations_assignments_and_maps(run, method):
    from repint import Interpretations
    from repint.fidelity import thumbnail
    from repint.metrics import mask_images, softmax

    stored = _stored(run["store"], method)
    ri = Interpretations.load(run["store"])
    paths = [run["root"] / "unseen" / i for i in stored["ids"]]
    result = ri.explain(paths, method=method)
    assert result.interpretation.tolist() == stored["centre"].tolist()
    if method == "RI":
        assert result.covered.tolist() == stored["covered"].tolist()
    np.testing.assert_allclose(thumbnail(result.heatmaps), stored["thumb"], atol=1e-6)
    np.testing.assert_array_equal(result.kept.reshape(len(paths), -1).mean(1), stored["kept_fraction"])
    x, _ = ri.images(paths)
    with torch.no_grad():
        y_masked = softmax(ri.split.composed(torch.as_tensor(mask_images(x, result.kept))).numpy())
    np.testing.assert_allclose(y_masked[np.arange(len(x)), result.predicted_class], stored["y_masked"], atol=1e-6)
    # arrays and PIL images give the same explanation as paths
    again = ri.explain(x[:5], method=method)
    assert again.interpretation.tolist() == result.interpretation[:5].tolist()
    pil = ri.explain([Image.open(p) for p in paths[:5]], method=method)
    np.testing.assert_allclose(pil.heatmaps, result.heatmaps[:5], atol=1e-6)


def test_similar_images_are_covered_ones_ranked_by_eq6(run):
    from repint import Interpretations
    from repint.ranking import semantic_distance
    from repint.storage import FeatureStore

    fs = FeatureStore(run["store"], mode="r")
    ri = Interpretations.load(run["store"])
    paths = sorted((run["root"] / "unseen").rglob("*.png"))[:12]
    result = ri.explain(paths)
    ref_ids = fs.read("reference/ids").tolist()
    for i, (ids, idx) in enumerate(result.similar_indices(3)):
        v = int(result.interpretation[i])
        covered = np.flatnonzero(fs.read("polytopes/covered", v))
        assert set(idx.tolist()) <= set(covered.tolist()) and len(ids) == min(3, len(covered))
        assert ids == [ref_ids[j] for j in idx]
        b = fs.read("polytopes/boundaries", v)
        W = fs.read("boundaries/W")[b[b >= 0]]
        if len(W):
            d = semantic_distance(W, result.features[i], fs.read_rows("reference/features", covered))
            assert idx.tolist() == covered[np.argsort(d, kind="stable")[:3]].tolist()
    assert result.similar(2)[0] == result.similar_indices(2)[0][0]


def test_a_changed_checkpoint_an_incomplete_store_and_a_foreign_method_are_clear_errors(run, tmp_path, capsys):
    from repint import Interpretations
    from repint.app.cli import main
    from repint.storage import FeatureStore, StoreError

    ckpt = Path(run["spec"].model["checkpoint"] or FeatureStore(run["store"], mode="r").attrs["model"]["checkpoint"])
    changed = tmp_path / "changed.pt"
    changed.write_bytes(ckpt.read_bytes() + b"\0")
    with pytest.raises(StoreError, match="SHA-256 .* the model changed"):
        Interpretations.load(run["store"], checkpoint=str(changed))
    assert main(["explain", run["store"], str(run["root"] / "unseen"), "--out", str(tmp_path / "o"),
                 "--checkpoint", str(changed)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Re-run `repint run`" in err and not (tmp_path / "o").exists()
    with pytest.raises(StoreError, match="not there"):
        Interpretations.load(run["store"], checkpoint=str(tmp_path / "moved.pt"))
    ri = Interpretations.load(run["store"])
    with pytest.raises(StoreError, match="no complete interpretations of 'Score-CAM'.*RI, Grad-CAM"):
        ri.explain(np.zeros((1, 3, 32, 32), np.float32), method="Score-CAM")
    with pytest.raises(ValueError, match=r"the model takes \[n, 3, 32, 32\]"):
        ri.explain(np.zeros((2, 3, 16, 16), np.float32))
    with pytest.raises(ValueError, match="NaN or infinite"):
        ri.explain(np.full((1, 3, 32, 32), np.nan, np.float32))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no images here")
    assert main(["explain", run["store"], str(tmp_path / "empty"), str(tmp_path / "missing"), "--out",
                 str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no image files in" in err and "(2 other entries skipped)" in err
    assert main(["explain", str(tmp_path / "nostore.zarr"), str(run["root"] / "unseen"), "--out",
                 str(tmp_path / "o3")]) == 2
    assert "No RepInt store at" in capsys.readouterr().err
    # a store whose polytopes stage did not finish
    copy = tmp_path / "incomplete.zarr"
    shutil.copytree(run["store"], copy)
    fs = FeatureStore(str(copy))
    stages = fs.attrs["stages"]
    stages["polytopes"]["complete"] = False
    fs.set_attrs(stages=stages)
    with pytest.raises(StoreError, match="'polytopes' is not complete"):
        Interpretations.load(str(copy))


def test_the_explain_flow_writes_a_new_results_folder_with_artifacts(run, tmp_path):
    from prefect.client.orchestration import get_client

    from repint.flows.explain import explain_flow

    out = tmp_path / "results"
    first = explain_flow(run["store"], [str(run["root"] / "unseen")], str(out), chunk_size=16)
    second = explain_flow(run["store"], [str(run["root"] / "unseen")], str(out), chunk_size=64, top=2)
    assert first["folder"] != second["folder"] and first["n_explained"] == second["n_explained"] == 60
    docs = [json.loads(Path(r["explanations"]).read_text()) for r in (first, second)]
    assert [[r["interpretation"] for r in d["explanations"]] for d in docs] == [[r["interpretation"] for r in
                                                                               docs[0]["explanations"]]] * 2
    assert all(len(r["similar"]) <= 2 for r in docs[1]["explanations"])
    assert not (Path(first["folder"]) / ".parts").exists()
    stored = _stored(run["store"], "RI")
    rows = {str(Path(r["image"]).relative_to(run["root"] / "unseen")): r for r in docs[0]["explanations"]}
    assert [rows[i]["interpretation"] for i in stored["ids"]] == stored["centre"].tolist()

    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts()}
    assert {"repint-explanations", "repint-explanations-table"} <= keys


def test_stale_stores_moved_references_and_odd_inputs_are_caught(run, tmp_path):
    from repint import Interpretations
    from repint.flows.explain import explain_flow
    from repint.storage import FeatureStore, StoreError
    from repint.tasks.explain import image_files

    # a rerun that stopped after new polytopes and before the interpretations: interpret-RI is stale
    copy = tmp_path / "stale.zarr"
    shutil.copytree(run["store"], copy)
    fs = FeatureStore(str(copy))
    stages = fs.attrs["stages"]
    assert stages["interpret-RI"]["reads"] == {"polytopes": stages["polytopes"]["fingerprint"]}
    stages["polytopes"]["fingerprint"] = "0" * 16
    fs.set_attrs(stages=stages)
    with pytest.raises(StoreError, match="'interpret-RI' was computed from an earlier 'polytopes'"):
        Interpretations.load(str(copy)).explain(np.zeros((1, 3, 32, 32), np.float32))
    # the reference images are no longer those of the store: similar images cannot be drawn
    moved = tmp_path / "moved.zarr"
    shutil.copytree(run["store"], moved)
    fs = FeatureStore(str(moved))
    other = tmp_path / "other-reference"
    shutil.copytree(run["root"] / "reference", other)
    (other / "0" / "d9999.png").write_bytes((run["root"] / "unseen" / "0").glob("*.png").__next__().read_bytes())
    fs.set_attrs(data_reference={**fs.attrs["data_reference"], "root": str(other)})
    ri = Interpretations.load(str(moved))
    assert len(ri.explain(np.zeros((1, 3, 32, 32), np.float32)).similar(2)[0]) <= 2  # ranking needs no image
    with pytest.raises(StoreError, match="reference images cannot be drawn: its images are not those of the store"):
        ri.reference_source()
    # inputs: 0..255 values, one path, a list of arrays, baselines' reuse
    ri = Interpretations.load(run["store"])
    one = sorted((run["root"] / "unseen").rglob("*.png"))[0]
    x, _ = ri.images([one])
    with pytest.raises(ValueError, match="divide 8-bit images by 255"):
        ri.explain(x * 255)
    assert ri.explain(one).interpretation.tolist() == ri.explain([x[0]]).interpretation.tolist()
    assert ri.explain(one, method="Grad-CAM").reuse(0) == "nearest" and ri.explain([]).heatmaps.shape[0] == 0
    # the output folder inside an input folder, hidden entries, empty paths are left out or skipped
    (tmp_path / "in" / ".hidden").mkdir(parents=True)
    (tmp_path / "in" / "out").mkdir()
    for name in ("a.png", ".hidden/b.png", "out/c.png"):
        (tmp_path / "in" / name).write_bytes(one.read_bytes())
    files, skipped = image_files([tmp_path / "in", ""], exclude=tmp_path / "in" / "out")
    assert files == [tmp_path / "in" / "a.png"] and skipped[0]["reason"].startswith("an empty path")
    # the flow: no credentials as parameters; an input without images is an empty result, not a failure
    with pytest.raises(ValueError, match="plain text as flow parameters"):
        explain_flow(run["store"], [str(tmp_path / "in")], str(tmp_path / "r"), storage_options={"secret": "s"})
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "readme.txt").write_text("no image")
    empty = explain_flow(run["store"], [str(tmp_path / "none")], str(tmp_path / "r"))
    assert empty["n_explained"] == 0 and not (Path(empty["folder"]) / ".parts").exists()
