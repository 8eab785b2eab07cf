"""The bad-input corpus of the data (issue #15): ``.npz`` pixel dtypes and ranges, ``.npz`` files that are not
what they should be, unseen images of a class the reference set lacks, and file names that are not valid
UTF-8. Each case asserts exactly what a user gets: the pixels after conversion, a counted skip with its id and
reason, or a one-line error naming the config key (``data.reference``/``data.unseen``) and what to do.
docs/bad-inputs.md is the table of these cases; tests/test_bad_inputs.py has the rest of the corpus.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from repint.app.cli import main
from repint.config import Config
from repint.data import ArraySource, ImageFolderSource
from repint.flows.spec import data_sources

NOT_UTF8 = "file name is not valid UTF-8: rename it"
needs_bytes_names = pytest.mark.skipif(
    os.name != "posix" or sys.platform == "darwin" or sys.getfilesystemencoding().lower() not in ("utf-8", "utf8"),
    reason="needs a file system that takes names of any bytes (Linux)")


# --------------------------------------------------------------------------------------- helpers
def _folder(root: Path, n_per_class: int, classes: tuple[str, ...] = ("cat", "dog"), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = rng.integers(0, 60, size=(32, 32, 3), dtype=np.uint8)
            lo, hi = (4, 16) if c % 2 == 0 else (16, 28)
            img[lo:hi, lo:hi] = 230
            Image.fromarray(img).save(root / name / f"{name}{i}.png")
    return root


def _png_bytes_name(folder: Path, name: bytes) -> None:
    """A valid PNG under a file name of raw bytes (not necessarily UTF-8)."""
    with open(os.path.join(os.fsencode(str(folder)), name), "wb") as f:
        Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(f, "PNG")


def _npz(path: Path, images: np.ndarray, labels: np.ndarray | None = None) -> str:
    if labels is None:
        np.savez(path, images=images)
    else:
        np.savez(path, images=images, labels=labels)
    return str(path)


def _arrays_cfg(ref: str, uns: str, image_size: int = 8, **model) -> Config:
    return Config.model_validate({"data": {"kind": "arrays", "reference": ref, "unseen": uns,
                                           "image_size": image_size}, "model": model})


def _good(tmp_path: Path, name: str = "u.npz", n: int = 4) -> str:
    return _npz(tmp_path / name, np.zeros((n, 3, 8, 8), np.uint8), np.arange(n) % 2)


# ------------------------------------------------------------------- .npz pixel dtypes and ranges
@pytest.mark.parametrize("dtype, values, expect", [
    (np.uint8, [0, 51, 255], [0.0, 0.2, 1.0]),
    (np.uint16, [0, 13107, 65535], [0.0, 0.2, 1.0]),
    (np.uint16, [0, 51, 255], [0.0, 51 / 65535, 255 / 65535]),  # by the dtype: 16-bit, however dark
    (np.bool_, [False, True, True], [0.0, 1.0, 1.0]),
    (np.int16, [0, 51, 255], [0.0, 0.2, 1.0]),  # all in 0..255: 8-bit
    (np.int64, [0, 51, 255], [0.0, 0.2, 1.0]),
    (np.int32, [0, 256, 65535], [0.0, 256 / 65535, 1.0]),  # over 255: 16-bit
    (np.uint32, [0, 13107, 65535], [0.0, 0.2, 1.0]),
    (np.uint64, [0, 51, 255], [0.0, 0.2, 1.0]),
    (np.int8, [0, 51, 127], [0.0, 0.2, 127 / 255]),
    (np.float16, [0.0, 0.5, 1.0], [0.0, 0.5, 1.0]),
    (np.float64, [0.0, 0.25, 1.0], [0.0, 0.25, 1.0]),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_npz_pixels_are_scaled_by_their_dtypes_range(tmp_path, dtype, values, expect):
    images = np.broadcast_to(np.asarray(values, dtype)[:, None, None, None], (3, 1, 2, 2)).copy()
    src = ArraySource(path=_npz(tmp_path / "r.npz", images, np.array([0, 1, 0])))
    out = src.load(np.arange(3))
    assert out.dtype == np.float32 and out.shape == (3, 3, 2, 2)
    np.testing.assert_allclose(out[:, 0, 0, 0], expect, rtol=1e-3 if dtype == np.float16 else 1e-6)
    assert src.labels.tolist() == [0, 1, 0] and src.class_names == ["0", "1"]


@pytest.mark.parametrize("dtype, values, message", [
    (np.int32, [0, 70000], r"r\.npz: images are int32 with values in \[0, 70000\], not pixels of 0\.\.255 \(8-bit\) or "
                           r"0\.\.65535 \(16-bit\): save them as uint8 or uint16, or as float in \[0, 1\]\.$"),
    (np.int8, [-1, 100], r"r\.npz: images are int8 with values in \[-1, 100\], not pixels of 0\.\.255"),
    (np.uint64, [0, 2**40], r"r\.npz: images are uint64 with values in \[0, 1099511627776\]"),
    (np.float32, [0, 255], r"r\.npz: images are float32 in \[0, 255\], not in \[0, 1\]: divide by 255 \(8-bit\) before "
                           r"saving, or save them as uint8\.$"),
    (np.float64, [0, 4095], r"r\.npz: images are float64 in \[0, 4095\], not in \[0, 1\]: divide by 65535 \(16-bit\)"),
    (np.float32, [0, 1e6], r"r\.npz: images are float32 in \[0, 1e\+06\], not in \[0, 1\]: scale them to \[0, 1\]"),
    (np.float32, [-2.1, 2.5], r"r\.npz: images are float32 in \[-2\.1, 2\.5\], not in \[0, 1\]: they look "
                              r"normalised: save the pixels before normalisation \(RepInt applies data\.mean and "
                              r"data\.std itself\)"),
    (np.float32, [0.5, np.nan], r"r\.npz: images hold 12 NaN and 0 inf values \(float32\), in 1 of the 2 images "
                                r"\(e\.g\. image 1\): save finite pixels in \[0, 1\]\.$"),
    (np.float64, [np.inf, 0.5], r"r\.npz: images hold 0 NaN and 12 inf values \(float64\), in 1 of the 2 images "
                                r"\(e\.g\. image 0\)"),
    (np.complex64, [0, 1], r"r\.npz: images are of dtype complex64, not pixels: save them as uint8 \(or uint16\), or "
                           r"as float in \[0, 1\]\.$"),
    (np.str_, ["a", "b"], r"r\.npz: images are of dtype <U1, not pixels"),
], ids=["int32-over-16-bit", "int8-negative", "uint64-huge", "float-0-255", "float-0-4095", "float-huge",
        "float-normalised", "float-nan", "float-inf", "complex", "strings"])
def test_npz_pixels_out_of_range_or_of_no_pixel_dtype_are_a_clear_error(tmp_path, dtype, values, message):
    images = np.broadcast_to(np.asarray(values, dtype)[:, None, None, None], (2, 3, 2, 2)).copy()
    with pytest.raises(ValueError, match=message) as err:
        ArraySource(path=_npz(tmp_path / "r.npz", images))
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------- .npz file problems
def _npy(tmp_path: Path) -> str:
    np.save(tmp_path / "r.npy", np.zeros((2, 3, 8, 8), np.float32))
    return str(tmp_path / "r.npy")


def _text(tmp_path: Path) -> str:
    (tmp_path / "r.npz").write_text("images,labels\n0,1\n")
    return str(tmp_path / "r.npz")


def _empty_file(tmp_path: Path) -> str:
    (tmp_path / "r.npz").write_bytes(b"")
    return str(tmp_path / "r.npz")


def _damaged(tmp_path: Path) -> str:
    path = _good(tmp_path, "r.npz")
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])  # a zip cut in half
    return path


def _objects(tmp_path: Path) -> str:
    np.savez(tmp_path / "r.npz", images=np.array([None, 1], dtype=object))
    return str(tmp_path / "r.npz")


def _arr(images: np.ndarray, labels: np.ndarray | None = None):
    return lambda tmp_path: _npz(tmp_path / "r.npz", images, labels)


U8 = np.zeros((4, 3, 8, 8), np.uint8)
NPZ_ERRORS = {
    "npy-file": (_npy, r"^data\.reference: .*r\.npy is a \.npy file \(one array\), not an \.npz archive of images and "
                       r"labels: save it with np\.savez\(path, images=\.\.\., labels=\.\.\.\)\.$"),
    "text-file-named-npz": (_text, r"^data\.reference: .*r\.npz is not an \.npz archive \(a zip of arrays; it is not a "
                                   r"zip file\): save it with np\.savez"),
    "empty-file": (_empty_file, r"^data\.reference: .*r\.npz is not an \.npz archive \(a zip of arrays; it is empty\)"),
    "damaged-zip": (_damaged, r"^data\.reference: .*r\.npz is damaged: its array '(images|labels)' cannot be read "
                              r"\(\w+\); save it with np\.savez\(path, images=\.\.\., labels=\.\.\.\) again\.$"),
    "object-array": (_objects, r"^data\.reference: .*r\.npz: array 'images' holds Python objects \(dtype object\), "
                               r"which RepInt does not unpickle"),
    "directory": (lambda t: str(t), r"^data\.reference: .* is a directory, not an \.npz archive"),
    "labels-shorter": (_arr(U8, np.array([0, 1, 0])), r"^data\.reference: .*r\.npz: 4 images but 3 labels: give one "
                                                      r"label per image, in the images' order\.$"),
    "labels-longer": (_arr(U8, np.arange(6) % 2), r"^data\.reference: .*r\.npz: 4 images but 6 labels"),
    "labels-2d": (_arr(U8, np.zeros((4, 2), np.int64)), r"^data\.reference: .*r\.npz: labels must be one integer class "
                                                        r"index per image \(1-D, e\.g\. int64\), got labels of shape "
                                                        r"\(4, 2\): save labels="),
    "labels-float": (_arr(U8, np.array([0.0, 1.0, 0.0, 1.0])), r"^data\.reference: .*r\.npz: labels must be one integer"
                                                               r" class index per image .*got labels float64"),
    "labels-negative": (_arr(U8, np.array([0, -1, 1, -3])),
                        r"^data\.reference: .*r\.npz: labels must be class indices 0, 1, \.\.\.; 2 are negative "
                        r"\(the lowest is -3\)\. Leave labels out if the images have none\.$"),
    "labels-huge": (_arr(U8, np.array([0, 1, 0, 10**7])), r"^data\.reference: .*labels must be class indices 0, 1, "
                                                          r"\.\.\.; the highest is 10000000, over 1,000,000\.$"),
    "zero-images": (_arr(np.zeros((0, 3, 8, 8), np.uint8)), r"^data\.reference: .*r\.npz has no images \(images has "
                                                            r"shape \(0, 3, 8, 8\)\): save at least one\.$"),
    "images-3d": (_arr(np.zeros((4, 8, 8), np.uint8)), r"^data\.reference: .*r\.npz: images must be \[N, 1\|3, H, W\], "
                                                       r"got \(4, 8, 8\)\.$"),
    "channels-last": (_arr(np.zeros((4, 8, 8, 3), np.uint8)), r"^data\.reference: .*r\.npz: images must be \[N, 1\|3, "
                                                              r"H, W\], got \(4, 8, 8, 3\): channels last\? save "
                                                              r"images\.transpose\(0, 3, 1, 2\)\.$"),
    "image-size": (_arr(np.zeros((4, 3, 28, 28), np.uint8)),
                   r"^data\.reference: .*r\.npz: images are 28x28 but data\.image_size is 8 \(the model is built for "
                   r"8x8 images\): set data\.image_size: 28, or resize the images to 8x8\.$"),
    "image-not-square": (_arr(np.zeros((4, 3, 8, 6), np.uint8)),
                         r"^data\.reference: .*r\.npz: images are 8x6 but data\.image_size is 8 .*: resize the images "
                         r"to 8x8 \(the model takes square images of data\.image_size\)"),
}


@pytest.mark.parametrize("case", list(NPZ_ERRORS))
def test_npz_file_problems_are_one_line_errors_naming_the_key(tmp_path, case):
    make, message = NPZ_ERRORS[case]
    ref = make(tmp_path)
    with pytest.raises(ValueError, match=message) as err:
        data_sources(_arrays_cfg(ref, _good(tmp_path)))
    text = str(err.value)
    assert "\n" not in text and "allow_pickle" not in text and "Errno" not in text


def test_missing_npz_names_the_key_and_what_to_give(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^data\.unseen: .*nothing\.npz does not exist \(expected an \.npz "
                                                r"archive of images \[N, 1\|3, H, W\] and labels \[N\]\): save it "
                                                r"with np\.savez\(path, images=\.\.\., labels=\.\.\.\)\.$"):
        data_sources(_arrays_cfg(_good(tmp_path, "r.npz"), str(tmp_path / "nothing.npz")))


def test_unseen_npz_size_is_checked_too(tmp_path):
    uns = _npz(tmp_path / "u.npz", np.zeros((2, 3, 16, 16), np.uint8), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"^data\.unseen: .*u\.npz: images are 16x16 but data\.image_size is 8"):
        data_sources(_arrays_cfg(_good(tmp_path, "r.npz"), uns))


@pytest.mark.parametrize("make, text", [
    (_npy, r"^repint run: error: data\.reference: .*r\.npy is a \.npy file"),
    (_text, r"^repint run: error: data\.reference: .*r\.npz is not an \.npz archive"),
], ids=["npy", "text"])
def test_cli_npz_errors_are_one_line_exit_2(tmp_path, capsys, make, text):
    ref = make(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"kind": "arrays", "reference": ref, "unseen": _good(tmp_path),
                                            "image_size": 8}, "runtime": {"task_runner": "threads"}}))
    rc = main(["run", str(cfg), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(text, err), err
    assert err.count("\n") == 1 and "Traceback" not in err and "allow_pickle" not in err


def test_npz_without_labels_still_works(tmp_path):
    ref = _npz(tmp_path / "r.npz", np.full((3, 1, 8, 8), 255, np.uint8))
    src, uns, name = data_sources(_arrays_cfg(ref, _good(tmp_path), num_classes=2))
    assert name == "r" and src.labels.tolist() == [-1, -1, -1] and src.class_names == []
    assert src.load(np.arange(3)).shape == (3, 3, 8, 8) and float(src.load(np.arange(3)).min()) == 1.0
    assert len(uns) == 4 and uns.labels.tolist() == [0, 1, 0, 1]


def test_unseen_npz_labels_the_reference_lacks_are_an_error(tmp_path):
    ref = _npz(tmp_path / "r.npz", np.zeros((4, 3, 8, 8), np.uint8), np.array([0, 1, 0, 1]))
    uns = _npz(tmp_path / "u.npz", np.zeros((5, 3, 8, 8), np.uint8), np.array([0, 2, 1, 3, 2]))
    with pytest.raises(ValueError, match=r"^data\.unseen: .*u\.npz: 3 images are labelled with classes the reference "
                                         r"set lacks \(labels \[2, 3\]; data\.reference has labels \[0, 1\]\): RI "
                                         r"explains the reference's classes; leave those images out\.$"):
        data_sources(_arrays_cfg(ref, uns))
    # a class missing between the reference's labels (0 and 2, no 1) is lacking too
    gap = _npz(tmp_path / "g.npz", np.zeros((4, 3, 8, 8), np.uint8), np.array([0, 2, 0, 2]))
    with pytest.raises(ValueError,
                       match=r"1 images are labelled .*\(labels \[1\]; data\.reference has labels \[0, 2\]"):
        data_sources(_arrays_cfg(gap, _npz(tmp_path / "v.npz", np.zeros((2, 3, 8, 8), np.uint8), np.array([0, 1]))))


def test_reference_npz_labels_beyond_the_model_are_an_error(tmp_path):
    ref = _npz(tmp_path / "r.npz", np.zeros((4, 3, 8, 8), np.uint8), np.array([0, 1, 4, 1]))
    with pytest.raises(ValueError, match=r"^data\.reference: .*r\.npz: a label is 4, but model\.num_classes is 3 "
                                         r"\(classes 0\.\.2\): fix the labels, or set model\.num_classes to the "
                                         r"model's number of outputs\.$"):
        data_sources(_arrays_cfg(ref, _good(tmp_path), num_classes=3))


# -------------------------------------------------------- unseen images of a class the reference lacks
def test_unseen_class_the_reference_lacks_is_a_counted_listed_skip(tmp_path):
    ref = ImageFolderSource(root=str(_folder(tmp_path / "ref", 2)), image_size=8)
    root = _folder(tmp_path / "uns", 2, classes=("cat", "dog", "horse"))
    (root / "horse" / "notes.txt").write_text("not an image")
    uns = ImageFolderSource(root=str(root), image_size=8, classes=ref.class_names)
    reason = ("class 'horse' is not a class of the reference set (data.reference has: cat, dog); RI explains the "
              "reference's classes")
    assert uns.skipped == [{"id": "horse/horse0.png", "reason": reason}, {"id": "horse/horse1.png", "reason": reason}]
    assert uns.ids == ["cat/cat0.png", "cat/cat1.png", "dog/dog0.png", "dog/dog1.png"]
    assert uns.labels.tolist() == [0, 0, 1, 1] and uns.class_names == ["cat", "dog"]


def test_unseen_class_skip_through_data_sources_lists_many_classes_briefly(tmp_path):
    classes = tuple(f"c{i:02d}" for i in range(12))
    ref = _folder(tmp_path / "ref", 1, classes=classes)
    uns = _folder(tmp_path / "uns", 1, classes=("c00", "zebra"))
    cfg = Config.model_validate({"data": {"kind": "imagefolder", "reference": str(ref), "unseen": str(uns),
                                          "image_size": 8}})
    _, src, _ = data_sources(cfg)
    assert src.ids == ["c00/c000.png"]
    assert src.skipped == [{"id": "zebra/zebra0.png", "reason": (
        "class 'zebra' is not a class of the reference set (data.reference has: c00, c01, c02, c03, c04, c05, c06, "
        "c07, c08, c09, ... (12 classes)); RI explains the reference's classes")}]


def test_unseen_folder_of_only_other_classes_is_a_clear_error(tmp_path):
    ref = _folder(tmp_path / "ref", 1)
    uns = _folder(tmp_path / "uns", 2, classes=("horse", "cow"))
    cfg = Config.model_validate({"data": {"kind": "imagefolder", "reference": str(ref), "unseen": str(uns),
                                          "image_size": 8}})
    with pytest.raises(ValueError, match=r"^data\.unseen: Image folder .*uns has no image of the reference set's "
                                         r"classes \(cat, dog\): its class folders cow, horse are not among them\. "
                                         r"Name the class folders as the reference set's\.$"):
        data_sources(cfg)


def test_unseen_folder_whose_images_were_all_skipped_is_a_clear_error(tmp_path):
    root = tmp_path / "uns"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"Image folder .*uns has no usable image: all 1 of its images of the "
                                         r"reference set's classes were skipped, e\.g\. cat/x\.png: "
                                         r"UnidentifiedImageError"):
        ImageFolderSource(root=str(root), image_size=8, classes=["cat", "dog"])


# ---------------------------------------------------------------------- names that are not UTF-8
@needs_bytes_names
def test_file_name_not_utf8_is_a_counted_skip(tmp_path):
    root = _folder(tmp_path / "ref", 2)
    _png_bytes_name(root / "cat", b"bad\xff.png")
    src = ImageFolderSource(root=str(root), image_size=8)
    assert src.skipped == [{"id": "cat/bad\\xff.png", "reason": NOT_UTF8}]
    assert src.ids == ["cat/cat0.png", "cat/cat1.png", "dog/dog0.png", "dog/dog1.png"]
    json.dumps(src.skipped, ensure_ascii=False).encode("utf-8")  # storable: no lone surrogates
    np.asarray(src.ids, dtype=str).tobytes()


@needs_bytes_names
def test_class_folder_not_utf8_in_the_reference_is_a_clear_error(tmp_path):
    root = _folder(tmp_path / "ref", 1)
    os.mkdir(os.path.join(os.fsencode(str(root)), b"caf\xe9"))
    _png_bytes_name(Path(os.fsdecode(os.path.join(os.fsencode(str(root)), b"caf\xe9"))), b"x.png")
    with pytest.raises(ValueError, match=r"Image folder .*ref has class folders whose names are not valid UTF-8: "
                                         r"caf\\xe9\. A class folder's name is its class's name in the results: "
                                         r"rename them\.$"):
        ImageFolderSource(root=str(root), image_size=8)


@needs_bytes_names
def test_class_folder_not_utf8_in_the_unseen_set_is_a_counted_skip(tmp_path):
    root = _folder(tmp_path / "uns", 1)
    bad = os.path.join(os.fsencode(str(root)), b"caf\xe9")
    os.mkdir(bad)
    _png_bytes_name(Path(os.fsdecode(bad)), b"a.png")
    _png_bytes_name(Path(os.fsdecode(bad)), b"b\xff.png")
    src = ImageFolderSource(root=str(root), image_size=8, classes=["cat", "dog"])
    reason = "class folder name is not valid UTF-8: rename it"
    assert src.skipped == [{"id": "caf\\xe9/a.png", "reason": reason}, {"id": "caf\\xe9/b\\xff.png", "reason": reason}]
    assert src.ids == ["cat/cat0.png", "dog/dog0.png"]


# ------------------------------------------------------------------------------------ files()
def test_files_are_the_decodable_images_in_index_order(tmp_path):
    root = _folder(tmp_path / "ref", 2)
    (root / "cat" / "broken.png").write_bytes(b"")
    src = ImageFolderSource(root=str(root), image_size=8)
    assert src.files() == [root / i for i in src.ids]
    assert [p.name for p in src.files()] == ["cat0.png", "cat1.png", "dog0.png", "dog1.png"]
    src.files().clear()  # a copy: the source keeps its own list
    assert len(src.files()) == len(src) == 4


# ------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_unseen_skips_reach_the_store_and_summary(tmp_path, capsys, prefect_harness, repint_cache):
    """An unseen folder with a class the reference lacks and a file name that is not UTF-8: the run completes
    and lists both kinds of skip in the store's attributes and summary.json."""
    from repint.storage import FeatureStore

    _folder(tmp_path / "train", 10, classes=("left", "right"))
    uns = _folder(tmp_path / "test", 3, classes=("left", "right", "horse"), seed=1)
    expect = [{"id": f"horse/horse{i}.png", "reason": "class 'horse' is not a class of the reference set "
               "(data.reference has: left, right); RI explains the reference's classes"} for i in range(3)]
    if os.name == "posix" and sys.platform != "darwin":
        _png_bytes_name(uns / "left", b"bad\xff.png")
        expect.append({"id": "left/bad\\xff.png", "reason": NOT_UTF8})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"kind": "imagefolder", "reference": "train", "unseen": "test", "image_size": 32},
        "model": {"checkpoint": "model.pt"}, "train": {"epochs": 10, "batch_size": 8},
        "interpretation": {"q": 10, "interpretations_per_class": 1},
        "evaluation": {"methods": ["RI"], "case_studies": 0},
        "runtime": {"task_runner": "threads", "chunk_size": 16}}))
    assert main(["train", str(cfg), "--no-event"]) == 0
    capsys.readouterr()
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out)]) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_unseen"] == 6
    assert summary["skipped_images"]["unseen"] == expect
    assert summary["skipped_images"]["count"] == len(expect)
    assert FeatureStore(str(out / "store.zarr"), mode="r").attrs["skipped_unseen"] == expect
