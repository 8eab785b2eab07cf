"""Image sources: the embedded digits default, ImageFolder directories, and arrays (``.npz``).

Every source returns pixel-space ``float32`` images ``[n, 3, H, W]`` in ``[0, 1]`` by index, so the
evaluation can re-read any image. ImageFolder files that do not decode are a *counted, reported skip*:
they are found when the folder is scanned, listed in :attr:`ImageSource.skipped`, written to the
store's attributes and to ``summary.json``, and never enter the reference or unseen set.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ArraySource", "DigitsSource", "ImageFolderSource", "ImageSource", "source_from_spec"]

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


@dataclass
class ImageSource(ABC):
    """A list of images addressable by index, with ids, optional labels and class names."""

    ids: list[str] = field(default_factory=list)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    class_names: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @abstractmethod
    def load(self, indices: np.ndarray) -> np.ndarray:
        """Images ``[n, 3, H, W]`` float32 in ``[0, 1]``."""

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
        self._images = images[idx]
        self.labels = labels[idx]
        self.ids = [f"digits/{i}" for i in idx]
        self.class_names = [str(c) for c in range(10)]

    def load(self, indices: np.ndarray) -> np.ndarray:
        return self._images[np.asarray(indices)]

    def spec(self) -> dict[str, Any]:
        return {"kind": "digits", "split": self.split, "image_size": self.image_size, "seed": self.seed,
                "unseen_fraction": self.unseen_fraction, "limit": self.limit}


def _decode(path: Path, image_size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        rgb = im.convert("RGB")
        if rgb.size != (image_size, image_size):
            rgb = rgb.resize((image_size, image_size), Image.BILINEAR)
        return np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0


@dataclass
class ImageFolderSource(ImageSource):
    """``root/<class>/<image>`` (torchvision ImageFolder layout), images resized to ``image_size``.

    ``per_class`` keeps at most that many images per class, drawn with ``seed``; ``classes`` fixes the
    class list (so reference and unseen folders share indices)."""

    root: str = ""
    image_size: int = 128
    per_class: int | None = None
    seed: int = 0
    classes: list[str] | None = None

    def __post_init__(self) -> None:
        root = Path(self.root)
        if not root.is_dir():
            raise FileNotFoundError(f"Image folder {root} does not exist (expected root/<class>/<image> files).")
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        self.class_names = list(self.classes) if self.classes else found
        if not self.class_names:
            raise ValueError(f"Image folder {root} has no class sub-folders (expected root/<class>/<image>).")
        rng = np.random.default_rng(self.seed)
        paths, labels = [], []
        for c, name in enumerate(self.class_names):
            files = sorted(p for p in (root / name).glob("*") if p.suffix.lower() in IMAGE_EXTENSIONS) \
                if (root / name).is_dir() else []
            if self.per_class is not None and len(files) > self.per_class:
                files = [files[i] for i in np.sort(rng.choice(len(files), self.per_class, replace=False))]
            paths += files
            labels += [c] * len(files)
        if not paths:
            raise ValueError(f"Image folder {root} contains no images with extensions {sorted(IMAGE_EXTENSIONS)}.")
        good, good_labels = [], []
        for p, y in zip(paths, labels, strict=True):
            try:
                _decode(p, self.image_size)
            except Exception as exc:  # any decoder failure is a reported skip
                self.skipped.append({"id": str(p.relative_to(root)), "reason": f"{type(exc).__name__}: {exc}"})
                continue
            good.append(p)
            good_labels.append(y)
        self._paths = good
        self.ids = [str(p.relative_to(root)) for p in good]
        self.labels = np.asarray(good_labels, dtype=np.int64)

    def load(self, indices: np.ndarray) -> np.ndarray:
        return np.stack([_decode(self._paths[i], self.image_size) for i in np.asarray(indices)])

    def content_fingerprint(self, batch: int = 256) -> str:
        h = hashlib.sha256(self.fingerprint().encode())
        for p in self._paths:
            h.update(hashlib.sha256(p.read_bytes()).digest())
        return h.hexdigest()[:16]

    def spec(self) -> dict[str, Any]:
        return {"kind": "imagefolder", "root": str(self.root), "image_size": self.image_size,
                "per_class": self.per_class, "seed": self.seed, "classes": self.class_names}


@dataclass
class ArraySource(ImageSource):
    """An ``.npz`` file with ``images`` ``[N, 3, H, W]`` (float in [0, 1] or uint8) and optional ``labels``."""

    path: str = ""

    def __post_init__(self) -> None:
        with np.load(self.path, allow_pickle=False) as z:
            images = z["images"]
            labels = z["labels"] if "labels" in z else np.full(len(images), -1)
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"{self.path}: images must be [N, 1|3, H, W], got {images.shape}.")
        uint8 = images.dtype == np.uint8
        images = images.astype(np.float32, copy=False)
        if uint8:
            images /= 255.0
        self._images = np.repeat(images, 3, axis=1) if images.shape[1] == 1 else images
        self.labels = labels.astype(np.int64)
        self.ids = [f"{Path(self.path).name}/{i}" for i in range(len(images))]
        known = sorted(set(self.labels.tolist()) - {-1})
        self.class_names = [str(c) for c in range(max(known) + 1)] if known else []

    def load(self, indices: np.ndarray) -> np.ndarray:
        return self._images[np.asarray(indices)]

    def spec(self) -> dict[str, Any]:
        return {"kind": "arrays", "path": str(self.path)}


def source_from_spec(spec: dict[str, Any]) -> ImageSource:
    """Rebuild a source from :meth:`ImageSource.spec` (used by tasks on workers)."""
    kind = spec["kind"]
    args = {k: v for k, v in spec.items() if k != "kind"}
    if kind == "digits":
        return _cached(DigitsSource, args)
    if kind == "imagefolder":
        return _cached(ImageFolderSource, args)
    if kind == "arrays":
        return _cached(ArraySource, args)
    raise ValueError(f"Unknown data source kind {kind!r}.")


_CACHE: dict[str, ImageSource] = {}


def _cached(cls: type[ImageSource], args: dict[str, Any]) -> ImageSource:
    key = cls.__name__ + repr(sorted(args.items()))
    if key not in _CACHE:
        src = cls(**args)
        _CACHE[key] = src
        # also under its own spec (e.g. with the resolved class list), which is what tasks ask for
        _CACHE[cls.__name__ + repr(sorted((k, v) for k, v in src.spec().items() if k != "kind"))] = src
    return _CACHE[key]
