"""The command line as a user runs it: `repint train` and `repint run` on a small ImageFolder
(with an image that does not decode), and the errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from repint.app.cli import main

pytestmark = pytest.mark.slow


def _image_folder(root: Path, n_per_class: int, seed: int) -> None:
    """Two classes of 32x32 RGB PNGs: bright squares top-left vs bottom-right, with noise."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(("left", "right")):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            img = rng.integers(0, 60, size=(32, 32, 3), dtype=np.uint8)
            if c == 0:
                img[4:16, 4:16] = 230
            else:
                img[16:28, 16:28] = 230
            Image.fromarray(img).save(root / name / f"{name}{i}.png")


@pytest.fixture(scope="module")
def folder_config(tmp_path_factory):
    base = tmp_path_factory.mktemp("folder")
    _image_folder(base / "train", 24, seed=0)
    _image_folder(base / "test", 10, seed=1)
    (base / "train" / "left" / "broken.jpg").write_text("this is not a JPEG")
    cfg = {
        "data": {"kind": "imagefolder", "reference": "train", "unseen": "test", "image_size": 32},
        "model": {"architecture": "vgg-small", "checkpoint": "model.pt"},
        "train": {"epochs": 10, "batch_size": 16},
        "interpretation": {"q": 60, "interpretations_per_class": 2},  # q > 48 reference images: clamped
        "runtime": {"task_runner": "threads", "chunk_size": 16},
    }
    path = base / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return base, path


def test_help_describes_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("demo", "run", "train"):
        assert cmd in out
    for cmd in ("demo", "run", "train"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "usage: repint " + cmd in capsys.readouterr().out


def test_train_then_run_on_an_image_folder(folder_config, prefect_harness, capsys):
    base, config = folder_config
    assert main(["train", str(config)]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert Path(trained["checkpoint"]) == base / "model.pt" and (base / "model.pt").exists()
    assert trained["test_accuracy"] >= 0.8  # the two classes are trivially separable

    out = base / "run"
    assert main(["run", str(config), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "RI" in printed and "Grad-CAM" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_reference"] == 48 and summary["n_unseen"] == 20
    assert summary["skipped_images"]["count"] == 1
    assert summary["skipped_images"]["reference"][0]["id"] == "left/broken.jpg"
    assert summary["n_boundaries"] == 48 and "clamped to 48" in summary["q_clamped"][0]
    assert set(summary["methods"]) == {"RI", "Grad-CAM"}


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_config_errors_name_the_key(tmp_path, capsys):
    bad = _write(tmp_path / "bad.yaml", {"interpretation": {"q": "many", "colour": 3}})
    assert main(["run", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "interpretation.q" in err and "interpretation.colour" in err


def test_unknown_layer_lists_layers(tmp_path, capsys, prefect_harness, repint_cache):
    cfg = _write(tmp_path / "c.yaml", {"data": {"limit": 60}, "model": {"layer": "features.99"}})
    assert main(["run", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "features.99" in err and "features.0" in err and "classifier.1" in err


def test_non_piecewise_linear_head_is_refused(tmp_path, capsys, prefect_harness):
    cfg = _write(tmp_path / "c.yaml", {"data": {"limit": 60}, "model": {"architecture": "_models:gelu_head_net",
                                                                         "layer": "features.19"}})
    assert main(["run", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "classifier.2" in err and "GELU" in err


def test_one_predicted_class_is_refused(tmp_path, capsys, prefect_harness):
    cfg = _write(tmp_path / "c.yaml", {"data": {"limit": 60}, "model": {"architecture": "_models:one_class_net",
                                                                         "layer": "features.19"},
                                       "runtime": {"task_runner": "threads"}})
    assert main(["run", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert "at least two predicted classes" in capsys.readouterr().err
