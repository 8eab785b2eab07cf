"""Image sources: the embedded digits default, ImageFolder directories, and arrays (``.npz``).

Every source returns pixel-space ``float32`` images ``[n, channels, H, W]`` (3 unless the model takes 1)
in ``[0, 1]`` by index, so the evaluation can re-read any image. ImageFolder files that do not decode
are a *counted, reported skip*: they are found when the folder is scanned, listed in
:attr:`ImageSource.skipped`, written to the store's attributes and to ``summary.json``, and never enter
the reference or unseen set. That covers truncated or empty files, non-images with an image extension,
unreadable files, images over :data:`MAX_IMAGE_PIXELS` (a decompression-bomb guard), file names that are
not valid UTF-8 (their ids could not be stored), and an unseen set's images of a class the reference set
lacks (RI explains the reference's classes). Grayscale, palette, RGBA (alpha dropped, as torchvision's
loader does) and 16-bit images (scaled from 0..65535, not clipped at 255) are converted to RGB, or to grey
(Pillow's luma) for single-channel models (``channels=1``). Arrays (:class:`ArraySource`) live in
:mod:`repint.arrays`. ``docs/bad-inputs.md`` lists every case.
"""

from __future__ import annotations

import hashlib
import os
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from repint.arrays import ArraySource

__all__ = ["ArraySource", "DigitsSource", "ImageFolderSource", "ImageSource", "ImageTooLargeError", "decode_image",
           "image_array", "is_utf8", "max_image_pixels", "source_from_spec"]

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


@dataclass
class ImageSource(ABC):
    """A list of images addressable by index, with ids, optional labels and class names."""

    ids: list[str] = field(default_factory=list)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    class_names: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    channels: int = 3

    def __len__(self) -> int:
        return len(self.ids)

    @abstractmethod
    def load(self, indices: np.ndarray) -> np.ndarray:
        """Images ``[n, channels, H, W]`` float32 in ``[0, 1]``."""

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """A JSON-able description from which :func:`source_from_spec` rebuilds the source."""

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(repr(sorted(self.spec().items())).encode())
        h.update("\n".join(self.ids).encode())
        h.update(self.labels.tobytes())
        return h.hexdigest()[:16]

    def content_fingerprint(self, batch: int = 256) -> str:
        """:meth:`fingerprint` plus the images themselves (their pixels; an image folder hashes its
        files' bytes), so that an image replaced under the same name counts as a change."""
        h = hashlib.sha256(self.fingerprint().encode())
        for lo in range(0, len(self), batch):
            h.update(np.ascontiguousarray(self.load(np.arange(lo, min(lo + batch, len(self))))).tobytes())
        return h.hexdigest()[:16]


def _with_channels(spec: dict[str, Any], channels: int) -> dict[str, Any]:
    """A source's spec names its channels only when they are not the default 3 (older specs stay the same)."""
    return spec if channels == 3 else {**spec, "channels": channels}


def _digits_arrays(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images[:, None].astype(np.float32) / 16.0)
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp(0, 1)
    return x.repeat(1, 3, 1, 1).numpy(), d.target.astype(np.int64)


@dataclass
class DigitsSource(ImageSource):
    """scikit-learn's bundled digits (1,797 8x8 images, 10 classes), upsampled to ``image_size``.

    A stratified split (``seed``) gives ``split='reference'`` (also the training set) and
    ``split='unseen'`` (``unseen_fraction`` of the images). ``limit`` keeps the first images of the
    split (for quick tests)."""

    split: str = "reference"
    image_size: int = 32
    seed: int = 0
    unseen_fraction: float = 0.3
    limit: int | None = None

    def __post_init__(self) -> None:
        from sklearn.model_selection import train_test_split

        images, labels = _digits_arrays(self.image_size)
        ref, unseen = train_test_split(np.arange(len(labels)), test_size=self.unseen_fraction,
                                       random_state=self.seed, stratify=labels)
        idx = np.sort(ref if self.split == "reference" else unseen)[: self.limit]
        self._images = images[idx, : self.channels]
        self.labels = labels[idx]
        self.ids = [f"digits/{i}" for i in idx]
        self.class_names = [str(c) for c in range(10)]

    def load(self, indices: np.ndarray) -> np.ndarray:
        return self._images[np.asarray(indices)]

    def spec(self) -> dict[str, Any]:
        return _with_channels({"kind": "digits", "split": self.split, "image_size": self.image_size,
                               "seed": self.seed, "unseen_fraction": self.unseen_fraction, "limit": self.limit},
                              self.channels)


def max_image_pixels() -> int | None:
    """The largest image RepInt decodes: Pillow's ``PIL.Image.MAX_IMAGE_PIXELS`` (89,478,485 pixels,
    about 9459 x 9459, unless changed), read at each call. Larger files are counted skips: decoding
    one would take gigabytes of memory, and a tiny file can claim a huge size (a decompression bomb)."""
    from PIL import Image

    return Image.MAX_IMAGE_PIXELS


class ImageTooLargeError(ValueError):
    """An image over :func:`max_image_pixels` (a counted skip, never decoded)."""


def _too_large(path: Path, size: tuple[int, int] | None, limit: int | None) -> ImageTooLargeError:
    dims = f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels" if size else "its size"
    return ImageTooLargeError(
        f"{path.name}: {dims} is over the limit of {limit:,} pixels (PIL.Image.MAX_IMAGE_PIXELS, a guard "
        "against decompression bombs); downscale the image, or raise the limit in the process that runs RepInt "
        "if you trust the file")


_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def _decode(path: Path, image_size: int, channels: int = 3) -> np.ndarray:
    from PIL import Image

    limit = max_image_pixels()
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as exc:  # over twice the limit: Pillow refuses to open it
        raise _too_large(path, None, limit) from exc
    with im:
        if limit is not None and im.size[0] * im.size[1] > limit:  # Pillow only warns up to twice the limit
            raise _too_large(path, im.size, limit)
        im.load()
        return image_array(im, image_size, channels)


decode_image = _decode  #: ``decode_image(path, image_size, channels)``: one image file as the model's input


def image_array(im: Any, image_size: int, channels: int = 3) -> np.ndarray:
    """A decoded PIL image as the model's input, ``[channels, image_size, image_size]`` float32 in
    ``[0, 1]``: what every image of an ImageFolder goes through (bilinear resize; 16-bit grey scaled, not
    clipped; one channel is ITU-R 601-2 luma)."""
    from PIL import Image

    if im.mode in _SIXTEEN_BIT_MODES:
        # 16-bit grayscale: Pillow's convert("RGB") clips at 255 (a white image); scale 0..65535 instead
        grey = np.clip(np.asarray(im, dtype=np.float32) / 65535.0, 0.0, 1.0)
        f = Image.fromarray(grey)  # mode "F"
        if f.size != (image_size, image_size):
            f = f.resize((image_size, image_size), Image.BILINEAR)
        return np.repeat(np.asarray(f, dtype=np.float32)[None], channels, axis=0).clip(0.0, 1.0)
    if channels == 1:  # Pillow's ITU-R 601-2 luma of RGB and palette images
        grey = im.convert("L")
        if grey.size != (image_size, image_size):
            grey = grey.resize((image_size, image_size), Image.BILINEAR)
        return np.asarray(grey, dtype=np.float32)[None] / 255.0
    rgb = im.convert("RGB")
    if rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0


@dataclass
class ImageFolderSource(ImageSource):
    """``root/<class>/<image>`` (torchvision ImageFolder layout), images resized to ``image_size``.

    ``per_class`` keeps at most that many images per class, drawn with ``seed``; ``classes`` fixes the
    class list (so reference and unseen folders share indices): the images of a class folder not in it are
    counted skips. A class folder whose name is not valid UTF-8 is an error where the folders define the
    classes (``classes`` not given: it would be a class of the model), and its images are skips otherwise."""

    root: str = ""
    image_size: int = 128
    per_class: int | None = None
    seed: int = 0
    classes: list[str] | None = None

    def __post_init__(self) -> None:
        root = Path(self.root)
        if not root.is_dir():
            raise FileNotFoundError(f"Image folder {root} does not exist (expected root/<class>/<image> files).")
        try:
            entries = list(root.iterdir())
        except PermissionError as exc:
            raise ValueError(f"Image folder {root} cannot be read ({exc.strerror}): give the user running RepInt "
                             "read and execute permission on it (chmod a+rX).") from exc
        found = sorted(p.name for p in entries if p.is_dir())
        if self.classes:
            self.class_names = list(self.classes)
        elif unnamed := [_shown(n) for n in found if not is_utf8(n)]:
            raise ValueError(f"Image folder {root} has class folders whose names are not valid UTF-8: "
                             f"{', '.join(unnamed)}. A class folder's name is its class's name in the results: "
                             "rename them.")
        else:
            self.class_names = found
        if not self.class_names:
            loose = sum(1 for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS)
            hint = (f" It holds {loose} images directly: put each class's images in its own sub-folder."
                    if loose else " It is empty.")
            raise ValueError(f"Image folder {root} has no class sub-folders (expected root/<class>/<image>).{hint}")
        known = set(self.class_names)
        foreign = [name for name in found if name not in known]
        for name in foreign:  # an unseen set's folder of a class the reference lacks: RI cannot explain it
            reason = (_foreign_class(name, self.class_names) if is_utf8(name)
                      else "class folder name is not valid UTF-8: rename it")
            self.skipped += [{"id": _shown(str(p.relative_to(root))), "reason": reason}
                             for p in _images_in(root / name)]
        rng = np.random.default_rng(self.seed)
        paths, labels = [], []
        for c, name in enumerate(self.class_names):
            files = _images_in(root / name)
            if self.per_class is not None and len(files) > self.per_class:
                files = [files[i] for i in np.sort(rng.choice(len(files), self.per_class, replace=False))]
            paths += files
            labels += [c] * len(files)
        if not paths:
            if foreign:
                names = ", ".join(map(_shown, foreign))
                raise ValueError(f"Image folder {root} has no image of the reference set's classes "
                                 f"({_class_list(self.class_names)}): its class folders {names} are not among them. "
                                 "Name the class folders as the reference set's.")
            raise ValueError(f"Image folder {root} contains no images with extensions {sorted(IMAGE_EXTENSIONS)}.")
        good, good_labels = [], []
        for p, y in zip(paths, labels, strict=True):
            if not is_utf8(p.name):  # its id could not be written to the store or to JSON
                self.skipped.append({"id": _shown(str(p.relative_to(root))),
                                     "reason": "file name is not valid UTF-8: rename it"})
                continue
            try:
                _decode(p, self.image_size, self.channels)
            except Exception as exc:  # any decoder failure is a reported skip
                self.skipped.append({"id": str(p.relative_to(root)), "reason": f"{type(exc).__name__}: {exc}"})
                continue
            good.append(p)
            good_labels.append(y)
        if not self.classes:  # the folders define the classes: each needs an image, or indices mean nothing
            used = set(good_labels)
            empty = [name for c, name in enumerate(self.class_names) if c not in used]
            if empty:
                why = [f"{root / name} ({_why_empty(root / name, self.skipped, name)})" for name in empty]
                raise ValueError(
                    f"Image folder {root} has class folders without a usable image: {', '.join(why)}. Every class "
                    "folder is a class of the model: add images to it, or remove the folder.")
        elif not good:
            raise ValueError(f"Image folder {root} has no usable image: all {len(paths)} of its images of the "
                             f"reference set's classes were skipped, e.g. {self.skipped[-1]['id']}: "
                             f"{self.skipped[-1]['reason']}")
        self._paths = good
        self.ids = [str(p.relative_to(root)) for p in good]
        self.labels = np.asarray(good_labels, dtype=np.int64)

    def files(self) -> list[Path]:
        """The decodable image files, in index order (image ``i`` is ``files()[i]``)."""
        return list(self._paths)

    def load(self, indices: np.ndarray) -> np.ndarray:
        return np.stack([_decode(self._paths[i], self.image_size, self.channels) for i in np.asarray(indices)])

    def content_fingerprint(self, batch: int = 256) -> str:
        h = hashlib.sha256(self.fingerprint().encode())
        for p in self._paths:
            h.update(hashlib.sha256(p.read_bytes()).digest())
        return h.hexdigest()[:16]

    def spec(self) -> dict[str, Any]:
        return _with_channels({"kind": "imagefolder", "root": str(self.root), "image_size": self.image_size,
                               "per_class": self.per_class, "seed": self.seed, "classes": self.class_names},
                              self.channels)


def is_utf8(name: str) -> bool:
    """Whether a file name read from disk is valid UTF-8 (Python keeps other bytes as lone surrogates, which
    cannot be written to the store or to JSON)."""
    return not any("\udc80" <= c <= "\udcff" for c in name)


def _shown(name: str) -> str:
    """A file name that is not valid UTF-8 with its bad bytes written ``\\xff``, as a printable id."""
    return name if is_utf8(name) else os.fsencode(name).decode("utf-8", "backslashreplace")


def _images_in(folder: Path) -> list[Path]:
    """The files of ``folder`` with an image extension, sorted (none when it is not a directory)."""
    return sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_EXTENSIONS) if folder.is_dir() else []


def _class_list(classes: list[str], shown: int = 10) -> str:
    more = f", ... ({len(classes)} classes)" if len(classes) > shown else ""
    return ", ".join(classes[:shown]) + more


def _foreign_class(name: str, classes: list[str]) -> str:
    return (f"class {name!r} is not a class of the reference set (data.reference has: {_class_list(classes)}); "
            "RI explains the reference's classes")


def _why_empty(folder: Path, skipped: list[dict[str, str]], name: str) -> str:
    n_skipped = sum(1 for s in skipped if Path(s["id"]).parts[0] == name)
    if n_skipped:
        return f"all {n_skipped} of its files were skipped, see the reasons in `skipped`"
    if not os.access(folder, os.R_OK | os.X_OK):
        return "not readable: chmod a+rX it"
    return f"no files with extensions {', '.join(sorted(IMAGE_EXTENSIONS))}"


def source_from_spec(spec: dict[str, Any]) -> ImageSource:
    """Rebuild a source from :meth:`ImageSource.spec` (used by tasks on workers)."""
    kind = spec["kind"]
    args = {k: v for k, v in spec.items() if k != "kind"}
    if kind == "digits":
        return _cached(DigitsSource, args)
    if kind == "imagefolder":
        return _cached(ImageFolderSource, args)
    if kind == "arrays":
        from repint.arrays import ArraySource

        return _cached(ArraySource, args)
    raise ValueError(f"Unknown data source kind {kind!r}.")


_CACHE: OrderedDict[str, ImageSource] = OrderedDict()
_CACHE_LOCK = threading.Lock()
CACHED_SOURCES = 16  # a five-run study with variants asks for about a dozen (each run's reference subsample)


def _stamp(args: dict[str, Any]) -> str:
    """What the cache key adds so that a source changed on disk is read again in a long-lived process
    (a Dask worker): an archive's size and time; a folder's and its class folders' times (files added or
    removed; a file replaced in place is found by its content hash, :mod:`repint.contents`)."""
    where = args.get("path") or args.get("root")
    if not where:
        return ""
    try:
        st = os.stat(where)
        parts = [f"{st.st_size}:{st.st_mtime_ns}"]
        if "root" in args and Path(where).is_dir():
            parts += [f"{e.name}:{e.stat().st_mtime_ns}" for e in sorted(os.scandir(where), key=lambda e: e.name)
                      if e.is_dir()]
    except OSError:
        return ""
    return "|" + ",".join(parts)


def _cached(cls: type[ImageSource], args: dict[str, Any]) -> ImageSource:
    """One source per spec and process (a folder is scanned, an archive read once), the
    :data:`CACHED_SOURCES` most recently used kept: a long-lived worker does not grow without bound."""
    stamp = _stamp(args)
    key = cls.__name__ + repr(sorted(args.items())) + stamp
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    src = cls(**args)
    with _CACHE_LOCK:
        # also under its own spec (e.g. with the resolved class list), which is what tasks ask for
        for k in (key, cls.__name__ + repr(sorted((k, v) for k, v in src.spec().items() if k != "kind")) + stamp):
            _CACHE[k] = src
            _CACHE.move_to_end(k)
        while len(_CACHE) > CACHED_SOURCES:
            _CACHE.popitem(last=False)
    return src


def __getattr__(name: str) -> Any:
    """``from repint.data import ArraySource`` (it lives in :mod:`repint.arrays`, which imports this module)."""
    if name == "ArraySource":
        from repint.arrays import ArraySource

        return ArraySource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
