r"""Average Drop / Average Increase (Eqs. 7-8) with exact top-20% masking in pixel space.

.. math::

    AD = \frac{100}{|S|}\sum_e \frac{\max(0, Y_c(e) - Y_c(e'))}{Y_c(e)}, \qquad
    AI = \frac{100}{|S|}\sum_e \mathbb{1}[Y_c(e) < Y_c(e')]

``Y_c`` is the softmax probability of ``c = Class(e)``; ``e'`` keeps exactly
``k = round(0.2·H·W)`` pixels with the highest map values (ties by pixel index) and sets the rest to
black (0 in pixel space).
"""

from __future__ import annotations

import numpy as np

__all__ = ["BASELINES", "CURVE_STEPS", "DEFAULT_METRICS", "KEEP_FRACTION", "KEEP_FRACTIONS", "METRICS",
           "AverageDropIncrease", "keep_count", "keep_top_fraction", "mask_images", "softmax"]


def softmax(logits: np.ndarray) -> np.ndarray:
    r"""Row-wise softmax ``[n, C]`` in float64, stable for large logits:

    .. math:: p_{ic} = \frac{\exp(z_{ic} - \max_k z_{ik})}{\sum_j \exp(z_{ij} - \max_k z_{ik})}

    The row maximum is subtracted in the dtype of ``logits``, then cast to float64 before ``exp``
    (the order every stored ``Y_c`` was computed in).
    """
    logits = np.asarray(logits)
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z.astype(np.float64))
    return e / e.sum(axis=1, keepdims=True)


#: the share of pixels an interpretation keeps for the AD/AI evaluation (the paper's 20%); the default
#: of ``evaluation.keep_fraction`` and of the core functions below
KEEP_FRACTION = 0.2
#: the faithfulness metrics ``evaluation.metrics`` selects beside AD/AI at ``KEEP_FRACTION``
#: (:mod:`repint.scoring`): AD/AI at several kept shares, RISE's deletion/insertion curves, ROAD's
#: keep/remove with noisy linear imputation, and how alike an interpretation's reused maps are
METRICS = ("ad-ai", "deletion-insertion", "road", "representativeness")
DEFAULT_METRICS = METRICS
#: the kept shares of ``ad-ai`` and ``road`` (``evaluation.keep_fractions``)
KEEP_FRACTIONS = (0.1, 0.2, 0.5)
#: the steps of a deletion/insertion curve (``evaluation.curve_steps``) and what removed pixels become
CURVE_STEPS = 8
BASELINES = ("black", "blur")


def keep_count(height: int, width: int, fraction: float = KEEP_FRACTION) -> int:
    """``round(fraction · H · W)`` with halves rounded up."""
    return int(np.floor(fraction * height * width + 0.5))


def keep_top_fraction(maps: np.ndarray, fraction: float = KEEP_FRACTION) -> np.ndarray:
    """Boolean keep-masks ``[n, H, W]``: exactly ``keep_count`` highest pixels per map, ties by index."""
    maps = np.asarray(maps)
    n, h, w = maps.shape
    k = keep_count(h, w, fraction)
    order = np.argsort(-maps.reshape(n, -1), axis=1, kind="stable")[:, :k]
    keep = np.zeros((n, h * w), dtype=bool)
    np.put_along_axis(keep, order, True, axis=1)
    return keep.reshape(n, h, w)


def mask_images(images: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Set the pixels outside ``keep`` ``[n, H, W]`` to 0 in every channel of ``images`` ``[n, C, H, W]``."""
    return np.where(keep[:, None, :, :], images, 0).astype(images.dtype, copy=False)


class AverageDropIncrease:
    """Stateful AD/AI: ``update(y, y_masked)`` per batch, ``summary()``, ``reset()``."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._drop = 0.0
        self._increase = 0
        self._n = 0

    def update(self, y: np.ndarray, y_masked: np.ndarray) -> None:
        y = np.asarray(y, dtype=np.float64)
        ym = np.asarray(y_masked, dtype=np.float64)
        if y.shape != ym.shape:
            raise ValueError(f"y and y_masked differ in shape: {y.shape} vs {ym.shape}")
        if (y <= 0).any():
            raise ValueError("Y_c(e) must be positive (a softmax probability).")
        self._drop += float((np.maximum(0.0, y - ym) / y).sum())
        self._increase += int((y < ym).sum())
        self._n += len(y)

    def summary(self) -> dict[str, float]:
        if self._n == 0:
            return {"AD": float("nan"), "AI": float("nan"), "n": 0}
        return {"AD": 100.0 * self._drop / self._n, "AI": 100.0 * self._increase / self._n, "n": self._n}
