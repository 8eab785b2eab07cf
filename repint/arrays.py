"""Arrays as an image source: an ``.npz`` archive of ``images`` ``[N, 1|3, H, W]`` and optional ``labels`` ``[N]``.

Pixels are converted to ``float32`` in ``[0, 1]`` by their dtype's range: ``uint8`` / 255, ``uint16`` / 65535,
``bool`` as 0/1, other integer types by the values they hold (all in 0..255: 8-bit, in 0..65535: 16-bit);
floats must already lie in ``[0, 1]``. Anything else, and every problem with the file itself (a ``.npy``, a
text file, a damaged archive, labels that are not one class index per image), is a one-line
:class:`ValueError` (:class:`FileNotFoundError` for a missing file) that says what to do, never numpy's
own message. ``docs/bad-inputs.md`` lists every case. ``repint.data`` re-exports :class:`ArraySource`.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from repint.data import ImageSource, _with_channels

__all__ = ["ArraySource", "pixels_in_unit_range"]

SAVE_HINT = "save it with np.savez(path, images=..., labels=...)"
MAX_LABEL = 1_000_000  # a class index above this is a mistake (and would make a class list of that length)


def _read(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``images`` and ``labels`` (``None`` when absent) arrays of the archive at ``path``."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (expected an .npz archive of images [N, 1|3, H, W] and "
                                f"labels [N]): {SAVE_HINT}.")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not an .npz archive: for an image folder set data.kind: "
                         f"imagefolder; for arrays {SAVE_HINT}.")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except PermissionError as exc:
        raise ValueError(f"{path} cannot be read ({exc.strerror}): give the user running RepInt read "
                         "permission on it (chmod a+r).") from exc
    if magic == b"\x93NUMPY":
        raise ValueError(f"{path} is a .npy file (one array), not an .npz archive of images and labels: {SAVE_HINT}.")
    if not magic.startswith(b"PK"):
        what = "it is empty" if not magic else "it is not a zip file"
        raise ValueError(f"{path} is not an .npz archive (a zip of arrays; {what}): {SAVE_HINT}.")
    name = "images"
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z:
                raise ValueError(f"{path} has no array 'images' (it has {sorted(z.files)}): {SAVE_HINT}.")
            images = z["images"]
            name = "labels"
            labels = z.get("labels")
    except ValueError as exc:
        if "pickle" not in str(exc):
            raise
        raise ValueError(f"{path}: array '{name}' holds Python objects (dtype object), which RepInt does not "
                         f"unpickle: save numeric arrays, {SAVE_HINT}.") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"{path} is damaged: its array '{name}' cannot be read ({type(exc).__name__}); "
                         f"{SAVE_HINT} again.") from None
    return images, labels


def _num(v: float) -> str:
    return f"{v:g}"


def pixels_in_unit_range(images: np.ndarray, where: str) -> np.ndarray:
    """``images`` as ``float32`` in ``[0, 1]`` by their dtype's range (see the module), or a one-line error."""
    dt = images.dtype
    if dt == np.bool_:
        return images.astype(np.float32)
    if dt.kind in "iu":
        scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(dt)
        if scale is None:
            lo, hi = int(images.min()), int(images.max())
            if lo < 0 or hi > 65535:
                raise ValueError(f"{where}: images are {dt} with values in [{lo}, {hi}], not pixels of 0..255 (8-bit) "
                                 "or 0..65535 (16-bit): save them as uint8 or uint16, or as float in [0, 1].")
            scale = 255.0 if hi <= 255 else 65535.0
        out = images.astype(np.float32)
        out /= np.float32(scale)
        return out
    if dt.kind != "f":
        raise ValueError(f"{where}: images are of dtype {dt}, not pixels: save them as uint8 (or uint16), or as "
                         "float in [0, 1].")
    finite = np.isfinite(images)
    if not finite.all():
        bad = np.flatnonzero(~finite.reshape(len(images), -1).all(axis=1))
        raise ValueError(f"{where}: images hold {int(np.isnan(images).sum())} NaN and {int(np.isinf(images).sum())} "
                         f"inf values ({dt}), in {len(bad)} of the {len(images)} images (e.g. image {bad[0]}): save "
                         "finite pixels in [0, 1].")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0 or hi > 1:
        if lo < 0:
            hint = ("they look normalised: save the pixels before normalisation (RepInt applies data.mean and "
                    "data.std itself)")
        elif hi <= 255:
            hint = "divide by 255 (8-bit) before saving, or save them as uint8"
        elif hi <= 65535:
            hint = "divide by 65535 (16-bit) before saving, or save them as uint16"
        else:
            hint = "scale them to [0, 1] before saving"
        raise ValueError(f"{where}: images are {dt} in [{_num(lo)}, {_num(hi)}], not in [0, 1]: {hint}.")
    return images.astype(np.float32, copy=False)


def _labels(labels: np.ndarray | None, n: int, where: str) -> np.ndarray:
    """One class index per image (``-1`` each when the archive has none), or a one-line error."""
    if labels is None:
        return np.full(n, -1, np.int64)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        what = f"of shape {labels.shape}" if labels.ndim != 1 else f"{labels.dtype}"
        raise ValueError(f"{where}: labels must be one integer class index per image (1-D, e.g. int64), got labels "
                         f"{what}: save labels=np.asarray(labels).reshape(-1).astype(np.int64).")
    if len(labels) != n:
        raise ValueError(f"{where}: {n} images but {len(labels)} labels: give one label per image, in the images' "
                         "order.")
    if n and int(labels.min()) < 0:
        neg = int((labels < 0).sum())
        raise ValueError(f"{where}: labels must be class indices 0, 1, ...; {neg} are negative (the lowest is "
                         f"{int(labels.min())}). Leave labels out if the images have none.")
    if n and int(labels.max()) > MAX_LABEL:
        raise ValueError(f"{where}: labels must be class indices 0, 1, ...; the highest is {int(labels.max())}, "
                         f"over {MAX_LABEL:,}.")
    return labels.astype(np.int64)


@dataclass
class ArraySource(ImageSource):
    """An ``.npz`` file with ``images`` ``[N, 1|3, H, W]`` (uint8, uint16, bool, other integers of 8- or
    16-bit values, or float in [0, 1]) and optional ``labels`` ``[N]`` (class indices 0, 1, ...)."""

    path: str = ""

    def __post_init__(self) -> None:
        path = Path(self.path)
        images, labels = _read(path)
        where = str(self.path)
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            hint = (": channels last? save images.transpose(0, 3, 1, 2)"
                    if images.ndim == 4 and images.shape[3] in (1, 3) else "")
            raise ValueError(f"{where}: images must be [N, 1|3, H, W], got {images.shape}{hint}.")
        if len(images) == 0:
            raise ValueError(f"{where} has no images (images has shape {images.shape}): save at least one.")
        if images.shape[1] == 3 and self.channels == 1:
            raise ValueError(f"{where}: images have 3 channels but the model takes 1 (data.channels): save "
                             "grey images [N, 1, H, W], or use a model of 3 input channels.")
        self.labels = _labels(labels, len(images), where)
        images = pixels_in_unit_range(images, where)
        self._images = np.repeat(images, self.channels, axis=1) if images.shape[1] == 1 else images
        self.ids = [f"{path.name}/{i}" for i in range(len(images))]
        known = sorted(set(self.labels.tolist()) - {-1})
        self.class_names = [str(c) for c in range(max(known) + 1)] if known else []

    @property
    def image_hw(self) -> tuple[int, int]:
        """The images' height and width."""
        return int(self._images.shape[2]), int(self._images.shape[3])

    def load(self, indices: np.ndarray) -> np.ndarray:
        return self._images[np.asarray(indices)]

    def spec(self) -> dict[str, Any]:
        return _with_channels({"kind": "arrays", "path": str(self.path)}, self.channels)
