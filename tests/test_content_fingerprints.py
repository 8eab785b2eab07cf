"""Content-true fingerprints (issue #15, item 1): images replaced under the same names are ingested
again, a touched file is not, and ``repint verify`` notices a store whose images changed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from repint.app.cli import main
from repint.contents import changed_chunks, content_record
from repint.data import ArraySource, ImageFolderSource


def _folder(root: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for c, name in enumerate(("left", "right")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 60, size=(32, 32, 3), dtype=np.uint8)
            lo, hi = (4, 16) if c == 0 else (16, 28)
            img[lo:hi, lo:hi] = 230
            Image.fromarray(img).save(root / name / f"{name}{i}.png")
    return root


def _invert(path: Path) -> None:
    Image.fromarray(255 - np.asarray(Image.open(path).convert("RGB"))).save(path)


def test_replaced_file_changes_its_chunk_only_and_a_touched_one_nothing(tmp_path):
    src = ImageFolderSource(root=str(_folder(tmp_path / "d", 3, 0)), image_size=32)  # 6 images
    rec = content_record(src, 4)  # chunks [0, 4) and [4, 6)
    assert len(rec["hashes"]) == 2 and all(rec["stats"])
    assert content_record(src, 4, rec) == rec

    touched = tmp_path / "d" / "left" / "left0.png"  # index 0: chunk 0
    os.utime(touched, ns=(1, 1))
    again = content_record(src, 4, rec)
    assert again["stats"][0] != rec["stats"][0] and again["hashes"] == rec["hashes"]
    assert again["fingerprint"] == rec["fingerprint"] and changed_chunks(src, rec) == []

    _invert(tmp_path / "d" / "right" / "right1.png")  # index 4: chunk 1
    now = content_record(src, 4, again)
    assert now["hashes"][0] == rec["hashes"][0] and now["hashes"][1] != rec["hashes"][1]
    assert now["fingerprint"] != rec["fingerprint"]
    assert changed_chunks(src, again) == [1]


def test_unchanged_stats_reuse_the_recorded_hash(tmp_path):
    """The cheap first check: a chunk whose files' names, sizes and times are those recorded is not read."""
    src = ImageFolderSource(root=str(_folder(tmp_path / "d", 2, 0)), image_size=32)
    rec = content_record(src, 8)
    forged = {**rec, "hashes": ["0" * 16]}
    assert content_record(src, 8, forged)["hashes"] == ["0" * 16]
    assert content_record(src, 4, forged)["hashes"] != ["0" * 16]  # another chunking: hashed again


def test_arrays_are_hashed_by_their_pixels(tmp_path):
    images = np.random.default_rng(0).random((5, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "a.npz", images=images, labels=np.array([0, 1, 0, 1, 0]))
    np.savez(tmp_path / "b.npz", images=1 - images, labels=np.array([0, 1, 0, 1, 0]))
    a, b = ArraySource(path=str(tmp_path / "a.npz")), ArraySource(path=str(tmp_path / "b.npz"))
    ra, rb = content_record(a, 2), content_record(b, 2)
    assert ra["stats"] == ["", "", ""] and ra["fingerprint"] != rb["fingerprint"]
    assert changed_chunks(b, ra) == [0, 1, 2]


def _cfg(tmp_path: Path) -> Path:
    cfg = {"data": {"kind": "imagefolder", "reference": "train", "unseen": "test", "image_size": 32},
           "model": {"checkpoint": "model.pt"}, "train": {"epochs": 8, "batch_size": 8},
           "interpretation": {"q": 12, "interpretations_per_class": 2},
           "evaluation": {"methods": ["RI", "Grad-CAM"], "case_studies": 0, "metrics": []},
           "runtime": {"task_runner": "threads", "chunk_size": 4}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _records(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "records.csv").sort_values(["method", "image_id"]).reset_index(drop=True)


@pytest.mark.slow
def test_run_after_the_images_changed_is_not_stale_and_verify_says_so(tmp_path, capsys, prefect_harness,
                                                                      repint_cache):
    """The issue's case: every unseen PNG replaced by its inverse under the same name. Before, the second
    run printed the first run's numbers and verify said OK."""
    _folder(tmp_path / "train", 8, 0)
    _folder(tmp_path / "test", 3, 1)
    cfg = _cfg(tmp_path)
    assert main(["train", str(cfg), "--no-event"]) == 0
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out)]) == 0
    first = _records(out)
    capsys.readouterr()
    assert main(["verify", str(out / "store.zarr"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"]

    for p in sorted((tmp_path / "test").rglob("*.png")):
        _invert(p)
    assert main(["verify", str(out / "store.zarr"), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    errors = [f for f in report["findings"] if f["level"] == "error"]
    assert [f["path"] for f in errors] == ["ingest/unseen"]
    assert "changed since they were ingested" in errors[0]["message"]
    assert "chunks [0, 1]" in errors[0]["message"]  # 6 unseen images in chunks of 4

    assert main(["run", str(cfg), "--out", str(out)]) == 0
    second = _records(out)
    assert not np.allclose(first["Y"], second["Y"])  # the inverted images' probabilities, not the old ones
    fresh = tmp_path / "fresh"
    assert main(["run", str(cfg), "--out", str(fresh)]) == 0
    pd.testing.assert_frame_equal(second.drop(columns=["run"], errors="ignore"),
                                  _records(fresh).drop(columns=["run"], errors="ignore"))
    capsys.readouterr()
    assert main(["verify", str(out / "store.zarr")]) == 0
    assert capsys.readouterr().out.rstrip().endswith("OK: 0 error(s), 0 warning(s)")
