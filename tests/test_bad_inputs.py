"""The bad-input corpus (issue #6): one test or case per bad input, each asserting exactly what a user
gets — a counted, listed skip, or a clear error (its type, the file or config key it names, what to
do) — and the security rules that keep configs and checkpoints from running code.

docs/bad-inputs.md is the table of these cases. Files are generated here with Pillow in temporary
folders; end-to-end cases use digits or a 32x32 two-class folder and the thread runner.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from repint.app.cli import main
from repint.boundaries import QClampWarning, sample_other_class, sample_reference_points
from repint.config import ConfigError, load_config
from repint.data import ArraySource, ImageFolderSource, ImageTooLargeError, _decode
from repint.nets import VGGNet, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PSI = "features.19"  # vgg-small's ψ at 32x32: the ReLU after the last convolution


# --------------------------------------------------------------------------------------- helpers
def _square(c: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A noisy image with a bright square top-left (class 0) or bottom-right (class 1)."""
    img = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    lo, hi = (size // 8, size // 2) if c == 0 else (size // 2, size - size // 8)
    img[lo:hi, lo:hi] = 230
    return img


def _folder(root: Path, n_per_class: int, seed: int = 0, classes: tuple[str, ...] = ("left", "right")) -> Path:
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            Image.fromarray(_square(c % 2, rng)).save(root / name / f"{name}{i}.png")
    return root


def _jpeg_bytes(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _truncated_jpeg(path: Path) -> None:
    data = _jpeg_bytes()
    path.write_bytes(data[: len(data) // 2])  # a valid JPEG cut in half


def _zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def _text_as_jpeg(path: Path) -> None:
    path.write_text("this is a text file, not a JPEG\n")


def _huge(path: Path) -> None:
    # 12000 x 12000 = 144 M pixels > PIL.Image.MAX_IMAGE_PIXELS (89.5 M): 1-bit, so 17 KB on disk
    Image.new("1", (12000, 12000)).save(path)


def _write_cfg(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run_cli(args: list[str], capsys) -> tuple[int, str]:
    rc = main(args)
    return rc, capsys.readouterr().err


def _vgg_state(num_classes: int = 10) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return VGGNet(num_classes=num_classes, image_size=32).state_dict()


def _digits_cfg(tmp_path: Path, model: dict, **extra) -> Path:
    cfg = {"data": {"kind": "digits", "limit": 60}, "model": model,
           "interpretation": {"q": 10, "interpretations_per_class": 1},
           "evaluation": {"methods": ["RI"], "case_studies": 0},
           "runtime": {"task_runner": "threads", "chunk_size": 32}, **extra}
    return _write_cfg(tmp_path / "config.yaml", cfg)


# models for the `module:function` hook (tests/ is on sys.path under pytest)
def gelu_head(num_classes: int) -> nn.Module:
    net = VGGNet(num_classes=num_classes, image_size=32)
    net.classifier[2] = nn.GELU()
    return net


def sigmoid_head(num_classes: int) -> nn.Module:
    net = VGGNet(num_classes=num_classes, image_size=32)
    net.classifier[2] = nn.Sigmoid()
    return net


def not_a_module(num_classes: int) -> str:
    return "a string"


# ------------------------------------------------------------- images that do not decode: counted skips
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("name, make, reason", [
    ("truncated.jpg", _truncated_jpeg, r"^OSError: image file is truncated"),
    ("zero-bytes.jpg", _zero_bytes, r"^UnidentifiedImageError: cannot identify image file .*zero-bytes\.jpg"),
    ("text.jpg", _text_as_jpeg, r"^UnidentifiedImageError: cannot identify image file .*text\.jpg"),
    ("huge.png", _huge, r"^ImageTooLargeError: huge\.png: 12000x12000 = 144,000,000 pixels is over the limit of "
                        r"89,478,485 pixels .*downscale the image"),
], ids=["truncated-jpeg", "zero-byte-file", "text-file-named-jpg", "very-large-image"])
def test_undecodable_file_is_a_counted_listed_skip(tmp_path, name, make, reason):
    root = _folder(tmp_path / "ref", 3)
    make(root / "left" / name)
    src = ImageFolderSource(root=str(root), image_size=16)
    assert len(src) == 6 and f"left/{name}" not in src.ids
    assert [s["id"] for s in src.skipped] == [f"left/{name}"]
    assert re.search(reason, src.skipped[0]["reason"]), src.skipped[0]["reason"]
    assert src.class_names == ["left", "right"] and src.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_decompression_bomb_over_twice_the_limit_is_a_skip_not_a_traceback(tmp_path, monkeypatch):
    """Over twice MAX_IMAGE_PIXELS Pillow raises DecompressionBombError in Image.open: a counted skip too."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    root = _folder(tmp_path / "ref", 2, classes=("a", "b"))
    Image.new("L", (100, 100)).save(root / "a" / "bomb.png")  # 10,000 pixels > 2 x 1,000
    for p in (root / "a").glob("a*.png"):  # keep the good images under the lowered limit
        Image.new("RGB", (16, 16)).save(p)
    for p in (root / "b").glob("b*.png"):
        Image.new("RGB", (16, 16)).save(p)
    src = ImageFolderSource(root=str(root), image_size=16)
    assert [s["id"] for s in src.skipped] == ["a/bomb.png"]
    assert src.skipped[0]["reason"].startswith("ImageTooLargeError: bomb.png: its size is over the limit of 1,000")
    with pytest.raises(ImageTooLargeError, match="downscale the image"):
        _decode(root / "a" / "bomb.png", 16)


# --------------------------------------------------------------------- images that decode: converted
def test_grayscale_is_repeated_to_rgb(tmp_path):
    Image.fromarray(np.full((8, 8), 128, np.uint8), mode="L").save(tmp_path / "g.png")
    x = _decode(tmp_path / "g.png", 8)
    assert x.shape == (3, 8, 8) and x.dtype == np.float32
    np.testing.assert_allclose(x, 128 / 255)


def test_rgba_drops_alpha_like_torchvision(tmp_path):
    """Alpha is dropped (torchvision's loader does the same: img.convert('RGB')), even where it is 0."""
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(tmp_path / "t.png")
    x = _decode(tmp_path / "t.png", 8)
    np.testing.assert_allclose(x[:, 3, 3] * 255, [10, 20, 30], atol=1e-4)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    """Mode I;16: Pillow's convert('RGB') clips at 255 (a mid-grey 16-bit image turns white)."""
    a = np.zeros((8, 8), np.uint16)
    a[:, :4], a[:, 4:] = 65535, 32768
    im = Image.fromarray(a)
    assert im.mode == "I;16"
    im.save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    x = _decode(tmp_path / "g16.png", 8)
    assert x.shape == (3, 8, 8)
    np.testing.assert_allclose(x[:, :, :4], 1.0, atol=1e-6)
    np.testing.assert_allclose(x[:, :, 4:], 32768 / 65535, atol=1e-6)
    assert x.max() <= 1.0


def test_converted_images_enter_the_set(tmp_path):
    root = _folder(tmp_path / "ref", 2)
    Image.new("L", (20, 20), 90).save(root / "left" / "grey.png")
    Image.new("RGBA", (20, 20), (1, 2, 3, 4)).save(root / "left" / "alpha.png")
    Image.fromarray(np.full((20, 20), 4000, np.uint16)).save(root / "right" / "deep.png")
    Image.new("P", (20, 20), 3).save(root / "right" / "palette.gif")
    src = ImageFolderSource(root=str(root), image_size=16)
    assert src.skipped == [] and len(src) == 8
    x = src.load(np.arange(len(src)))
    assert x.shape == (8, 3, 16, 16) and x.min() >= 0 and x.max() <= 1


# -------------------------------------------------------------------------------- unreadable files
def _chmod_stops_reads(path: Path) -> bool:
    try:
        path.read_bytes()
    except PermissionError:
        return True
    return False


def test_unreadable_file_is_a_counted_skip(tmp_path):
    root = _folder(tmp_path / "ref", 2)
    locked = root / "right" / "locked.png"
    Image.new("RGB", (8, 8)).save(locked)
    locked.chmod(0)
    try:
        if not _chmod_stops_reads(locked):
            pytest.skip("running as root (or with CAP_DAC_OVERRIDE): chmod 000 does not stop reads here; "
                        "test_permission_error_while_decoding_is_a_counted_skip covers the same path")
        src = ImageFolderSource(root=str(root), image_size=8)
        assert [s["id"] for s in src.skipped] == ["right/locked.png"]
        assert src.skipped[0]["reason"].startswith("PermissionError: [Errno 13] Permission denied")
    finally:
        locked.chmod(0o644)


def test_unreadable_folder_is_a_clear_error(tmp_path):
    root = _folder(tmp_path / "ref", 1)
    root.chmod(0)
    try:
        if not _chmod_stops_reads(root / "left" / "left0.png"):
            pytest.skip("running as root (or with CAP_DAC_OVERRIDE): chmod 000 does not stop reads here")
        with pytest.raises(ValueError, match=r"cannot be read .*chmod a\+rX"):
            ImageFolderSource(root=str(root), image_size=8)
    finally:
        root.chmod(0o755)


def test_permission_error_while_decoding_is_a_counted_skip(tmp_path, monkeypatch):
    """What an unreadable file raises inside Pillow (simulated, so that it also runs as root)."""
    root = _folder(tmp_path / "ref", 2)
    locked = root / "right" / "locked.png"
    Image.new("RGB", (8, 8)).save(locked)
    real_open = Image.open

    def guarded(fp, *a, **k):
        if Path(fp) == locked:
            raise PermissionError(13, "Permission denied", str(fp))
        return real_open(fp, *a, **k)

    monkeypatch.setattr(Image, "open", guarded)
    src = ImageFolderSource(root=str(root), image_size=8)
    assert [s["id"] for s in src.skipped] == ["right/locked.png"]
    assert src.skipped[0]["reason"].startswith("PermissionError: [Errno 13] Permission denied")
    assert len(src) == 4


# ---------------------------------------------------------------------------- folder-level problems
def test_empty_class_folder_is_a_clear_error(tmp_path):
    root = _folder(tmp_path / "ref", 2)
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match=r"class folders without a usable image: .*empty \(no files with "
                                         r"extensions .*add images to it, or remove the folder"):
        ImageFolderSource(root=str(root), image_size=8)


def test_class_folder_with_only_undecodable_files_is_a_clear_error(tmp_path):
    root = _folder(tmp_path / "ref", 2)
    (root / "broken").mkdir()
    _zero_bytes(root / "broken" / "a.jpg")
    with pytest.raises(ValueError, match=r"broken \(all 1 of its files were skipped"):
        ImageFolderSource(root=str(root), image_size=8)


def test_empty_class_folder_in_the_unseen_set_is_allowed(tmp_path):
    """The unseen set takes the reference classes: it need not have images of each."""
    root = _folder(tmp_path / "test", 2)
    (root / "third").mkdir()
    src = ImageFolderSource(root=str(root), image_size=8, classes=["left", "right", "third"])
    assert len(src) == 4 and src.skipped == []


def test_empty_data_directory_is_a_clear_error(tmp_path):
    (tmp_path / "ref").mkdir()
    with pytest.raises(ValueError, match=r"has no class sub-folders \(expected root/<class>/<image>\)\. It is empty"):
        ImageFolderSource(root=str(tmp_path / "ref"), image_size=8)


def test_images_without_class_folders_say_what_to_do(tmp_path):
    (tmp_path / "ref").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / "ref" / f"{i}.png")
    with pytest.raises(ValueError, match="holds 3 images directly: put each class's images in its own sub-folder"):
        ImageFolderSource(root=str(tmp_path / "ref"), image_size=8)


def test_npz_without_images_is_a_clear_error(tmp_path):
    np.savez(tmp_path / "r.npz", pixels=np.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match=r"r\.npz has no array 'images' \(it has \['pixels'\]\)"):
        ArraySource(path=str(tmp_path / "r.npz"))


def _folder_cfg(tmp_path: Path, ref: Path, uns: Path, **model) -> Path:
    return _write_cfg(tmp_path / "c.yaml", {"data": {"kind": "imagefolder", "reference": str(ref),
                                                     "unseen": str(uns), "image_size": 32},
                                            "model": model, "runtime": {"task_runner": "threads"}})


@pytest.mark.parametrize("case", ["empty-data-directory", "empty-class-folder", "missing-directory"])
def test_cli_folder_errors_name_the_config_key(tmp_path, capsys, case):
    uns = _folder(tmp_path / "test", 1)
    ref = tmp_path / "ref"
    if case == "empty-data-directory":
        ref.mkdir()
        expect = r"data\.reference: Image folder .*ref has no class sub-folders"
    elif case == "empty-class-folder":
        _folder(ref, 1)
        (ref / "nothing").mkdir()
        expect = r"data\.reference: Image folder .*class folders without a usable image: .*nothing"
    else:
        expect = r"data\.reference: Image folder .*ref does not exist"
    rc, err = _run_cli(["run", str(_folder_cfg(tmp_path, ref, uns)), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    assert re.search(r"^repint run: error: " + expect, err), err
    assert "Traceback" not in err


def test_one_class_only_is_a_clear_error(tmp_path, capsys):
    ref = _folder(tmp_path / "ref", 3, classes=("only",))
    uns = _folder(tmp_path / "test", 1, classes=("only",))
    rc, err = _run_cli(["run", str(_folder_cfg(tmp_path, ref, uns)), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    assert "data.reference has a single class ('only')" in err
    assert "Add the other classes' folders, or set model.num_classes" in err


# ---------------------------------------------------------------------------------------- the model
@pytest.mark.parametrize("hook, module", [("gelu_head", "GELU"), ("sigmoid_head", "Sigmoid")])
def test_non_piecewise_linear_head_is_refused(tmp_path, capsys, hook, module):
    cfg = _digits_cfg(tmp_path, {"architecture": f"test_bad_inputs:{hook}", "layer": PSI})
    rc, err = _run_cli(["run", str(cfg), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    assert f"not piecewise linear: module 'classifier.2' ({module})" in err  # the user's own name
    assert "net." not in err
    assert "Cut ψ at a later layer (`repint layers` lists them), or set `allow_nonlinear_head: true`" in err


def test_unknown_layer_lists_the_layers(tmp_path, capsys):
    cfg = _digits_cfg(tmp_path, {"layer": "features.99"})
    rc, err = _run_cli(["run", str(cfg), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    assert "Layer 'features.99' does not exist in VGGNet" in err
    assert "features.19" in err and "classifier.6" in err
    assert "net." not in err  # the user's own names, never the internal wrapper's
    assert "Name the layer whose output is ψ" in err


@pytest.mark.parametrize("hook, expect", [
    ("no_such_module_xyz:net", r"model\.architecture 'no_such_module_xyz:net': cannot import 'net' from "
                               r"'no_such_module_xyz' \(ModuleNotFoundError"),
    ("test_bad_inputs:no_such_function", r"cannot import 'no_such_function' .*\(AttributeError"),
    ("test_bad_inputs:not_a_module", r"returned a str, not a torch\.nn\.Module"),
])
def test_model_hook_that_does_not_give_a_module(tmp_path, capsys, hook, expect):
    cfg = _digits_cfg(tmp_path, {"architecture": hook, "layer": PSI})
    rc, err = _run_cli(["run", str(cfg), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and re.search(expect, err), err


# ----------------------------------------------------------------------------------- checkpoints
def _ckpt_case(path: Path, case: str) -> str:
    """Write a bad checkpoint for vgg-small on digits; return the pattern its error must match."""
    name = re.escape(str(path))
    if case == "missing-and-unexpected-keys":
        state = _vgg_state()
        del state["classifier.1.weight"]
        state["extra.weight"] = torch.zeros(2)
        torch.save(state, path)
        return (rf"Checkpoint {name} does not match the architecture: missing keys \['classifier\.1\.weight'\], "
                r"unexpected keys \['extra\.weight'\]\. Check `model\.architecture`")
    if case == "wrong-shapes":
        torch.save(_vgg_state(num_classes=3), path)
        return (rf"Checkpoint {name} does not fit the architecture: size mismatch for classifier\.6\.weight.*"
                r"Check `model\.architecture`, `model\.num_classes`")
    if case == "not-a-state-dict":
        torch.save([torch.zeros(2)], path)
        return rf"Checkpoint {name} holds a list, not a state dict of tensors: save it with torch\.save"
    if case == "state-dict-with-non-tensors":
        torch.save({"epoch": 3, "lr": 0.1}, path)
        return rf"Checkpoint {name} holds a dict with values of type float, int, not a state dict of tensors"
    if case == "text-file":
        path.write_text("hello")
        return rf"Cannot load checkpoint {name} \(.*\): `model\.checkpoint` must be a file written by torch\.save"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing-and-unexpected-keys", "wrong-shapes", "not-a-state-dict",
                                  "state-dict-with-non-tensors", "text-file"])
def test_bad_checkpoint_is_reported_before_any_flow(tmp_path, capsys, case):
    ckpt = tmp_path / "model.pt"
    expect = _ckpt_case(ckpt, case)
    with pytest.raises(ValueError) as err:
        load_checkpoint(VGGNet(num_classes=10, image_size=32), ckpt)
    assert re.search(expect, str(err.value)), str(err.value)
    rc, stderr = _run_cli(["run", str(_digits_cfg(tmp_path, {"checkpoint": str(ckpt)})), "--out",
                           str(tmp_path / "o")], capsys)
    assert rc == 2 and re.search(expect, stderr), stderr
    assert not (tmp_path / "o" / "store.zarr").exists()  # refused in build_spec: no flow ran


class _RunsCode:
    """Unpickling this calls ``fn(arg)``: a checkpoint carrying code."""

    def __init__(self, fn, arg) -> None:
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec", "raw-pickle"])
def test_checkpoint_carrying_code_is_refused_and_never_executed(tmp_path, capsys, payload):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "model.pt"
    if payload == "os.system":
        torch.save({**_vgg_state(), "evil": _RunsCode(os.system, f"touch {marker}")}, ckpt)
    elif payload == "builtins.exec":
        torch.save(_RunsCode(exec, f"open({str(marker)!r}, 'w').close()"), ckpt)
    else:  # a plain pickle file, not torch's zip format
        import pickle

        ckpt.write_bytes(pickle.dumps(_RunsCode(os.system, f"touch {marker}")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about the pickle protocol of the raw pickle
        with pytest.raises(ValueError, match=rf"Refused to load checkpoint {re.escape(str(ckpt))}: it is not a plain "
                                             r"state dict but a pickle of Python objects.*weights_only=True only; "
                                             r"save the weights as a plain state dict"):
            load_checkpoint(VGGNet(num_classes=10, image_size=32), ckpt)
        rc, err = _run_cli(["run", str(_digits_cfg(tmp_path, {"checkpoint": str(ckpt)})), "--out",
                            str(tmp_path / "o")], capsys)
    assert rc == 2 and "Refused to load checkpoint" in err
    if payload != "raw-pickle":
        assert f"(it refers to {'posix.system' if payload == 'os.system' else 'exec'})" in err
    assert not marker.exists()  # never executed


# --------------------------------------------------------------------------------------- features
def _poisoned(tmp_path: Path, kind: str) -> Path:
    state = _vgg_state()
    if kind == "nan":
        state["features.17.weight"].fill_(float("nan"))  # the conv before ψ: ψ = ReLU(NaN) = NaN
    elif kind == "inf":
        state["features.18.weight"].zero_()
        state["features.18.bias"].fill_(float("inf"))  # batch-norm before ψ: ψ = +inf
    else:  # all-zero: batch-norm before ψ outputs -1, cut by the ReLU
        state["features.18.weight"].zero_()
        state["features.18.bias"].fill_(-1.0)
    path = tmp_path / f"{kind}.pt"
    torch.save(state, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_nan_or_inf_features_are_refused_naming_the_images(tmp_path, capsys, prefect_harness, kind):
    cfg = _digits_cfg(tmp_path, {"checkpoint": str(_poisoned(tmp_path, kind))})
    rc, err = _run_cli(["run", str(cfg), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2, err
    # chunks of 32 of the 60 reference and 60 unseen images: whichever chunk fails first is reported
    assert re.search(r"NaN or inf in ψ at layer 'features\.19' for (\d+) of the \1 (reference|unseen) images "
                     r"\d+\.\.\d+: digits/\d+, digits/\d+, digits/\d+, digits/\d+, digits/\d+ \.\.\.", err), err
    assert "check the images, the checkpoint's weights (`model.checkpoint`) and the input normalisation" in err


@pytest.mark.slow
def test_all_zero_feature_maps_are_a_clear_error(tmp_path, capsys, prefect_harness):
    cfg = _digits_cfg(tmp_path, {"checkpoint": str(_poisoned(tmp_path, "zero"))})
    rc, err = _run_cli(["run", str(cfg), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2, err
    assert "ψ at layer 'features.19' is zero for every reference image" in err
    assert "choose another `model.layer`" in err


# ------------------------------------------------------------------------------ |Q| and |V| clamps
def test_q_larger_than_the_other_class_images_is_clamped_with_a_warning():
    preds = np.array([0, 0, 0, 1, 1])
    with pytest.warns(QClampWarning, match=r"\|Q\| = 50 is larger than the 2 reference images of another class "
                                           r"than input 0; clamped to 2"):
        others = sample_other_class(preds, 0, 50, np.random.default_rng(0))
    assert sorted(others.tolist()) == [3, 4]
    with pytest.warns(QClampWarning, match=r"\|Q\| = 9 is larger than the 5 reference images; clamped to 5"):
        assert len(sample_reference_points(5, 9, np.random.default_rng(0))) == 5


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_corpus_end_to_end_skips_and_clamps_in_summary_and_store(tmp_path, capsys, prefect_harness, repint_cache):
    """A folder with every decode failure, converted images, |Q| above the other-class images and more
    interpretations than reference images: the run completes and reports each."""
    from repint.storage import FeatureStore

    ref, uns = _folder(tmp_path / "train", 10, seed=0), _folder(tmp_path / "test", 3, seed=1)
    bad = {"left/truncated.jpg": _truncated_jpeg, "left/zero-bytes.jpg": _zero_bytes,
           "right/text.jpg": _text_as_jpeg, "right/huge.png": _huge}
    for rel, make in bad.items():
        make(ref / rel)
    _zero_bytes(uns / "left" / "empty.png")
    rng = np.random.default_rng(2)
    Image.fromarray(_square(0, rng)).convert("L").save(ref / "left" / "grey.png")
    Image.fromarray(_square(1, rng)).convert("RGBA").save(ref / "right" / "alpha.png")
    cfg = _write_cfg(tmp_path / "c.yaml", {
        "data": {"kind": "imagefolder", "reference": "train", "unseen": "test", "image_size": 32},
        "model": {"checkpoint": "model.pt"}, "train": {"epochs": 10, "batch_size": 8},
        "interpretation": {"q": 500, "q_sampling": "boundary-search", "interpretations_per_class": 12},
        "evaluation": {"methods": ["RI"], "case_studies": 0},
        "runtime": {"task_runner": "threads", "chunk_size": 16},
    })
    assert main(["train", str(cfg), "--no-event"]) == 0  # trains on the 22 images that decode
    assert json.loads(capsys.readouterr().out)["test_accuracy"] >= 0.8
    out = tmp_path / "run"
    rc, err = _run_cli(["run", str(cfg), "--out", str(out)], capsys)
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_reference"] == 22 and summary["n_unseen"] == 6
    skipped = summary["skipped_images"]
    assert skipped["count"] == 5
    assert sorted(s["id"] for s in skipped["reference"]) == sorted(bad)
    assert [s["id"] for s in skipped["unseen"]] == ["left/empty.png"]
    assert all(s["reason"] for s in skipped["reference"] + skipped["unseen"])
    # 12 per class x 2 classes = 24 > 22 reference images
    assert summary["n_interpretations"] == 22
    assert summary["interpretations_clamped"] == [
        "interpretation.interpretations_per_class = 12 x 2 classes = 24 interpretations is more than the 22 "
        "reference images; clamped to 22. Lower interpretations_per_class or add reference images."]
    assert summary["q_clamped"] and all("reference images of another class than input" in m
                                        for m in summary["q_clamped"])
    attrs = FeatureStore(str(out / "store.zarr"), mode="r").attrs
    assert sorted(s["id"] for s in attrs["skipped_reference"]) == sorted(bad)
    assert attrs["skipped_unseen"] == skipped["unseen"]
    assert attrs["interpretations_clamped"] == summary["interpretations_clamped"]
    assert attrs["q_clamped"] == summary["q_clamped"]


# ------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("raw, paths", [
    ({"interpretation": {"q": "many", "colour": 3}}, ["interpretation.q", "interpretation.colour"]),
    ({"colour": 1, "data": {"image_size": [32]}}, ["colour", "data.image_size"]),
    ({"evaluation": {"variants": [{"q": 0}], "keep_fraction": 2}}, ["evaluation.variants", "evaluation.keep_fraction"]),
    ({"data": {"mean": [0.5, 0.5]}, "runtime": {"task_runner": "mpi"}}, ["data.mean", "runtime.task_runner"]),
], ids=["unknown-key-and-wrong-type", "top-level-unknown-and-list-for-int", "variant-and-range", "tuple-and-enum"])
def test_config_errors_name_the_key_path(tmp_path, capsys, raw, paths):
    cfg = _write_cfg(tmp_path / "bad.yaml", raw)
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    for p in paths:
        assert re.search(rf"^  {re.escape(p)}(\.\S+)?: ", str(err.value), re.M), str(err.value)
    rc, stderr = _run_cli(["run", str(cfg), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and f"Config {cfg} is invalid" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("text, expect", [
    ("data: {kind: digits\n", "Cannot read config"),
    ("- a\n- b\n", "must be a mapping of sections"),
], ids=["yaml-syntax", "not-a-mapping"])
def test_unreadable_config_is_a_clear_error(tmp_path, capsys, text, expect):
    (tmp_path / "c.yaml").write_text(text)
    rc, err = _run_cli(["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and expect in err


# ----------------------------------------------------------------------------------------- security
def test_config_cannot_run_code_through_yaml_tags(tmp_path, capsys):
    marker = tmp_path / "pwned"
    (tmp_path / "c.yaml").write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    rc, err = _run_cli(["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "Cannot read config" in err and "could not determine a constructor" in err
    assert not marker.exists()


def _python_files(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py") if "__pycache__" not in p.parts)


PRODUCT = ("repint", "storage", "tasks", "flows", "app", "benchmarks")


def _calls(path: Path) -> list[tuple[str, ast.Call]]:
    """(dotted name of the callee, call) for every call in a file: ``torch.load``, ``eval``, ..."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            parts, f = [], node.func
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            parts.append(f.id if isinstance(f, ast.Name) else "<expr>")  # x().eval() is not eval()
            out.append((".".join(reversed(parts)), node))
    return out


def _kw(call: ast.Call, name: str) -> object:
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<not a constant>"
    return "<absent>"


def test_torch_load_is_always_weights_only():
    files = _python_files(*PRODUCT, "tests", "examples")
    loaders = ("torch.load", "weights.get_state_dict", "torch.hub.load_state_dict_from_url")
    bad = [f"{p.relative_to(ROOT)}:{c.lineno}" for p in files for name, c in _calls(p)
           if name in loaders and _kw(c, "weights_only") is not True]
    assert bad == [], "torch.load (or torchvision's weights loader) without weights_only=True"
    found = {name for name, _ in _calls(ROOT / "repint" / "checkpoints.py")}
    assert {"torch.load", "weights.get_state_dict"} <= found  # the scan sees both


def test_no_unsafe_deserialisation_in_the_product():
    unsafe = {"yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load",
              "yaml.full_load_all", "pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads",
              "dill.load", "dill.loads", "marshal.load", "marshal.loads", "shelve.open", "torch.jit.load",
              "joblib.load", "pd.read_pickle", "pandas.read_pickle"}
    found = [f"{p.relative_to(ROOT)}:{c.lineno} {name}" for p in _python_files(*PRODUCT) for name, c in _calls(p)
             if name in unsafe or (name in ("np.load", "numpy.load") and _kw(c, "allow_pickle") not in (False,
                                                                                                       "<absent>"))]
    assert found == []
    for p in _python_files(*PRODUCT):
        assert not re.search(r"yaml\.(Unsafe|Full)?Loader\b", p.read_text()), p


def test_only_the_documented_hook_imports_by_name():
    """Config values reach importlib only in build_model's `module:function` hook; eval/exec never."""
    dynamic = {"eval", "exec", "compile", "__import__", "importlib.import_module", "importlib.__import__",
               "importlib.util.spec_from_file_location", "runpy.run_path", "runpy.run_module", "os.system",
               "os.popen"}
    found = {(str(p.relative_to(ROOT)), name) for p in _python_files(*PRODUCT) for name, _ in _calls(p)
             if name in dynamic}
    assert found == {
        ("repint/nets.py", "importlib.import_module"),  # the module:function model hook (documented)
        ("flows/__init__.py", "importlib.import_module"),  # lazy import of the flows modules (constants)
        ("repint/__init__.py", "importlib.import_module"),  # PEP 562 public names (a constant table)
        ("flows/cluster.py", "importlib.import_module"),  # a worker probe imports repint's own task module
    }
    shell = [f"{p.relative_to(ROOT)}:{c.lineno}" for p in _python_files(*PRODUCT) for name, c in _calls(p)
             if name.startswith("subprocess.") and _kw(c, "shell") not in (False, "<absent>")]
    assert shell == []


def test_the_code_hook_is_documented():
    example = (ROOT / "examples" / "config.yaml").read_text()
    assert "`module:function` hook imports and runs" in example and "only way a config can execute code" in example
    doc = (ROOT / "docs" / "bad-inputs.md").read_text()
    assert "module:function" in doc and "weights_only=True" in doc and "127.0.0.1" in doc


def test_servers_bind_to_localhost_by_default():
    texts = {p: p.read_text() for p in [*_python_files(*PRODUCT), ROOT / "README.md", ROOT / "prefect.yaml",
                                       *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").glob("*.yaml")]}
    assert [str(p) for p, t in texts.items() if "0.0.0.0" in t or "--host ::" in t] == []
    for p, t in texts.items():
        for line in t.splitlines():
            if "prefect server start" in line:
                assert "--host 127.0.0.1" in line, f"{p}: {line}"
            if re.search(r"^\s*dask scheduler\b", line):
                assert "--host" in line, f"{p}: {line}"  # never every interface
            if "LocalCluster(" in line:
                assert "127.0.0.1" in t[t.index(line): t.index(line) + 400], f"{p}: {line}"
    dag = (ROOT / "flows" / "runners.py").read_text()  # the local Dask cluster's options
    assert '"host": "127.0.0.1"' in dag and '"dashboard_address": "127.0.0.1:0"' in dag


def test_credentials_are_masked_in_the_spec_and_errors(monkeypatch):
    from repint.config import expand_env
    from repint.tasks.runspec import RunSpec

    spec = RunSpec(store="s3://AKIAEXAMPLE:hunter2secret@bucket/s.zarr", storage_options={"secret": "s3cr3t-value"},
                   out_dir="/tmp/o", dataset="d", reference={}, unseen={}, model={}, interpretation={},
                   evaluation={}, runtime={"chunk_size": 8})
    for text in (spec.model_dump_json(), repr(spec), str(spec)):
        assert "hunter2secret" not in text and "s3cr3t-value" not in text and "AKIAEXAMPLE" not in text
    monkeypatch.delenv("REPINT_TEST_UNSET", raising=False)
    with pytest.raises(ValueError, match=r"storage_options\.secret refers to the environment variable "
                                         r"REPINT_TEST_UNSET, which is not set"):
        expand_env({"secret": "${REPINT_TEST_UNSET}"})
