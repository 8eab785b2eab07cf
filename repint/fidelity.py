r"""Faithfulness metrics on precomputed heat maps, beside AD/AI (:mod:`repint.metrics`).

Every perturbation is done in pixel space: ``images`` ``[n, C, H, W]`` are floats in ``[0, 1]`` *before* the model's
own normalisation, ``maps`` ``[n, H, W]`` are heat maps at input size. Pixels are ordered by map value, descending,
ties by pixel index (row-major), exactly as :func:`repint.metrics.keep_top_fraction` orders them. With
:math:`\pi_e` that order and :math:`k(f) = \mathrm{round}(f \cdot H \cdot W)` (:func:`repint.metrics.keep_count`),
:math:`T_k(e) = \{\pi_e(1), \dots, \pi_e(k)\}` is the set of the ``k`` most important pixels of ``e``.

``forward`` maps images ``[m, C, H, W]`` to logits ``[m, K]``; it is called with ONE concatenated array of at most
``batch`` images per call (perturbations of several images and steps together), and at most ``batch`` perturbed
images exist at any time. ``Y_c(x)`` is the softmax probability of ``c = classes[i]`` (:func:`repint.metrics.softmax`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage, stats

from repint.imputation import _impute, road_impute
from repint.metrics import BASELINES, keep_count, keep_top_fraction, mask_images, softmax

__all__ = [
    "BASELINES", "CurveMetric", "Forward", "baseline_images", "blur_baseline", "curve_auc", "kept_probabilities",
    "pairwise_rank_agreement", "perturbation_curves", "pixel_order", "rank_agreement", "road_impute", "road_scores",
    "thumbnail",
]

#: images ``[m, C, H, W]`` (pixel space) -> logits ``[m, K]``
Forward = Callable[[np.ndarray], np.ndarray]
#: the baselines of :func:`baseline_images`: ``"black"`` (zeros) and ``"blur"`` (:func:`blur_baseline`)


def pixel_order(maps: np.ndarray) -> np.ndarray:
    """Pixel indices ``[n, H·W]`` (row-major) by map value, descending, ties by index: ``π_e`` of the module text.

    ``order[:, :k]`` is the set :func:`repint.metrics.keep_top_fraction` keeps for ``k = keep_count(H, W, f)``. The
    maps are compared in float64 (exact for every float32 map and integer map below ``2^53``).
    """
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"maps must be [n, H, W], got shape {maps.shape}")
    return np.argsort(-maps.reshape(len(maps), -1).astype(np.float64), axis=1, kind="stable")


def _ranks(maps: np.ndarray) -> np.ndarray:
    """Position of each pixel in :func:`pixel_order` ``[n, H·W]``: ``rank < k`` is the top-``k`` set ``T_k``."""
    order = pixel_order(maps)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(order.shape[1]), order.shape), axis=1)
    return ranks


def blur_baseline(images: np.ndarray, sigma: float | None = None) -> np.ndarray:
    r"""Gaussian blur of each channel of each image over ``(H, W)`` only, borders ``mode="nearest"``:

    .. math:: \tilde e_{c} = G_\sigma * e_{c}, \qquad \sigma = \max(1, H / 16) \text{ by default}

    (14 px at ``H = 224``, 2 px at 32): strong enough to remove the detail of an object, weak enough to keep the
    image's colours, the "blurred image" baseline of RISE. Channels and images are never mixed.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be [n, C, H, W], got shape {images.shape}")
    s = max(1.0, images.shape[2] / 16) if sigma is None else float(sigma)
    if s < 0:
        raise ValueError(f"sigma must be >= 0, got {s}")
    return ndimage.gaussian_filter(images, sigma=(0.0, 0.0, s, s), mode="nearest")


def baseline_images(images: np.ndarray, name: str) -> np.ndarray:
    """The baseline ``b(e)`` of each image: ``"black"`` = zeros (0, pixel space), ``"blur"``: :func:`blur_baseline`."""
    images = np.asarray(images)
    if name == "black":
        return np.zeros_like(images)
    if name == "blur":
        return blur_baseline(images)
    raise ValueError(f"unknown baseline {name!r}; choose one of {BASELINES}")


def _validated(images: np.ndarray, maps: np.ndarray, classes: np.ndarray, batch: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images, maps, classes = np.asarray(images), np.asarray(maps), np.asarray(classes)
    if images.ndim != 4:
        raise ValueError(f"images must be [n, C, H, W], got shape {images.shape}")
    n, _, h, w = images.shape
    if maps.shape != (n, h, w):
        raise ValueError(f"maps must be [n, H, W] = {(n, h, w)}, got shape {maps.shape}")
    if classes.shape != (n,) or not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"classes must be integers of shape ({n},), got {classes.dtype} {classes.shape}")
    if int(batch) < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    return images, maps, classes


def _fractions(fractions: Sequence[float]) -> np.ndarray:
    f = np.asarray(fractions, dtype=np.float64).reshape(-1)
    if f.size == 0 or ((f < 0) | (f > 1)).any():
        raise ValueError(f"fractions must be a non-empty sequence in [0, 1], got {fractions!r}")
    return f


def _probabilities(forward: Forward, job_image: np.ndarray, classes: np.ndarray, batch: int,
                   build: Callable[[slice], np.ndarray]) -> np.ndarray:
    """``Y_c`` of each job; ``build(slice)`` makes the images of consecutive jobs; one ``forward`` per ``batch``."""
    out = np.empty(len(job_image), dtype=np.float64)
    for start in range(0, len(job_image), batch):
        sl = slice(start, min(start + batch, len(job_image)))
        x = build(sl)
        logits = np.asarray(forward(x))
        if logits.ndim != 2 or len(logits) != len(x):
            raise ValueError(f"forward must return logits [{len(x)}, K], got shape {logits.shape}")
        out[sl] = softmax(logits)[np.arange(len(x)), classes[job_image[sl]]]
    return out


def perturbation_curves(forward: Forward, images: np.ndarray, maps: np.ndarray, classes: np.ndarray,
                        mode: Literal["deletion", "insertion"], baseline: str = "black", steps: int = 16,
                        batch: int = 128, y_full: np.ndarray | None = None,
                        y_baseline: np.ndarray | None = None) -> np.ndarray:
    r"""Deletion / insertion curves of RISE (Petsiuk et al., BMVC 2018) ``[n, steps + 1]``:

    .. math::

        D_t(e) = Y_c\big(\mathbb{1}_{T_{k_t}}\, b(e) + (1 - \mathbb{1}_{T_{k_t}})\, e\big), \qquad
        I_t(e) = Y_c\big(\mathbb{1}_{T_{k_t}}\, e + (1 - \mathbb{1}_{T_{k_t}})\, b(e)\big), \qquad
        k_t = \mathrm{keep\_count}(H, W, t / \mathrm{steps})

    for ``t = 0..steps``, ``b`` the ``baseline`` (:func:`baseline_images`). ``k_0 = 0`` and ``k_steps = H·W``, so
    ``D_0 = I_steps = Y_c(e)`` and ``D_steps = I_0 = Y_c(b(e))``: those come from ``y_full`` / ``y_baseline`` ``[n]``
    when given (no forward), else are computed; so is every step whose ``k_t`` is 0 or ``H·W`` (tiny images), and steps
    with equal ``k_t`` share one forward. Deletion: lower AUC is better; insertion: higher is better.
    """
    images, maps, classes = _validated(images, maps, classes, batch)
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {BASELINES}")
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    n, _, h, w = images.shape
    hw = h * w
    ks = np.array([keep_count(h, w, t / steps) for t in range(steps + 1)])
    uniq = np.unique(ks)
    table = np.full((n, len(uniq)), np.nan)
    # the probability at k = 0 and k = H·W is known when the caller gave it
    known = {0: y_full, hw: y_baseline} if mode == "deletion" else {0: y_baseline, hw: y_full}
    todo = []
    for j, k in enumerate(uniq):
        given = known.get(int(k))
        if given is None:
            todo.append(j)
            continue
        given = np.asarray(given, dtype=np.float64)
        if given.shape != (n,):
            raise ValueError(f"y_full / y_baseline must have shape ({n},), got {given.shape}")
        table[:, j] = given
    job_image = np.repeat(np.arange(n), len(todo))
    job_col = np.tile(np.asarray(todo, dtype=np.int64), n)
    job_k = uniq[job_col]

    def build(sl: slice) -> np.ndarray:
        u, inv = np.unique(job_image[sl], return_inverse=True)
        top = (_ranks(maps[u])[inv] < job_k[sl, None]).reshape(-1, 1, h, w)
        base = baseline_images(images[u], baseline)[inv]
        x = images[job_image[sl]]
        return np.where(top, base, x) if mode == "deletion" else np.where(top, x, base)

    table[job_image, job_col] = _probabilities(forward, job_image, classes, int(batch), build)
    return table[:, np.searchsorted(uniq, ks)]


def curve_auc(curves: np.ndarray) -> np.ndarray:
    r"""Area under each curve ``[n, T + 1]`` -> ``[n]`` by the trapezoidal rule over ``x_t = t / T``:

    .. math:: \mathrm{AUC} = \frac{1}{T}\Big(\frac{y_0 + y_T}{2} + \sum_{t=1}^{T-1} y_t\Big)
    """
    curves = np.asarray(curves, dtype=np.float64)
    if curves.ndim != 2 or curves.shape[1] < 2:
        raise ValueError(f"curves must be [n, steps + 1] with steps >= 1, got shape {curves.shape}")
    return np.trapezoid(curves, x=np.linspace(0.0, 1.0, curves.shape[1]), axis=1)


def road_scores(forward: Forward, images: np.ndarray, maps: np.ndarray, classes: np.ndarray,
                fractions: Sequence[float] = (0.1, 0.2, 0.5), *, mode: Literal["keep", "remove"],
                noise: float = 0.01, batch: int = 128, seed: int = 0) -> np.ndarray:
    r"""ROAD probabilities ``[n, F]`` (Rong et al., ICML 2022), imputing by :func:`road_impute` instead of black:

    .. math::

        \mathrm{keep}_f(e) = Y_c\big(\mathrm{impute}(e, \overline{T_{k(f)}})\big), \qquad
        \mathrm{remove}_f(e) = Y_c\big(\mathrm{impute}(e, T_{k(f)})\big)

    ``"keep"`` keeps exactly the ``k(f)`` top pixels and imputes the rest (LeRF: high is good); ``"remove"``
    imputes the ``k(f)`` top pixels (MoRF: low is good). Image ``i`` uses noise seed ``seed + i`` at every fraction.
    """
    images, maps, classes = _validated(images, maps, classes, batch)
    if mode not in ("keep", "remove"):
        raise ValueError(f"mode must be 'keep' or 'remove', got {mode!r}")
    f = _fractions(fractions)
    n, _, h, w = images.shape
    ks = np.array([keep_count(h, w, x) for x in f])
    job_image, job_f = np.repeat(np.arange(n), len(f)), np.tile(np.arange(len(f)), n)

    def build(sl: slice) -> np.ndarray:
        u, inv = np.unique(job_image[sl], return_inverse=True)
        top = (_ranks(maps[u])[inv] < ks[job_f[sl], None]).reshape(-1, h, w)
        removed = ~top if mode == "keep" else top
        return _impute(images[job_image[sl]], removed, noise, seed + job_image[sl])

    return _probabilities(forward, job_image, classes, int(batch), build).reshape(n, len(f))


def kept_probabilities(forward: Forward, images: np.ndarray, maps: np.ndarray, classes: np.ndarray,
                       fractions: Sequence[float], batch: int = 128) -> np.ndarray:
    r"""``Y_c(e'_f)`` ``[n, F]``: exactly ``k(f)`` top pixels kept, the rest black, the masking of AD/AI:

    .. math:: e'_f = \mathbb{1}_{T_{k(f)}}\, e

    made by :func:`repint.metrics.keep_top_fraction` and :func:`repint.metrics.mask_images`, so that column ``f``
    with ``y = Y_c(e)`` in :class:`repint.metrics.AverageDropIncrease` gives AD/AI at the fraction ``f``.
    """
    images, maps, classes = _validated(images, maps, classes, batch)
    f = _fractions(fractions)
    n = len(images)
    job_image, job_f = np.repeat(np.arange(n), len(f)), np.tile(np.arange(len(f)), n)

    def build(sl: slice) -> np.ndarray:
        idx, fi = job_image[sl], job_f[sl]
        x = np.empty((len(idx), *images.shape[1:]), dtype=images.dtype)
        for j in np.unique(fi):
            sel = fi == j
            x[sel] = mask_images(images[idx[sel]], keep_top_fraction(maps[idx[sel]], float(f[j])))
        return x

    return _probabilities(forward, job_image, classes, int(batch), build).reshape(n, len(f))


def rank_agreement(maps: np.ndarray) -> float:
    r"""Mean Spearman rank correlation over all pairs ``i < j`` of the flattened maps ``[n, ...]``:

    .. math::

        \bar\rho = \frac{2}{n(n-1)} \sum_{i<j} z_i^\top z_j
                 = \frac{\lVert \sum_i z_i \rVert^2 - \sum_i \lVert z_i \rVert^2}{n(n-1)}, \qquad
        z_i = \frac{r_i - \bar r_i}{\lVert r_i - \bar r_i \rVert}

    with ``r_i`` the ranks of map ``i`` (:func:`scipy.stats.rankdata`, ties averaged). A constant map has
    ``z_i = 0``: its correlation with anything counts as 0. The closed form costs ``O(n · H · W)``, no ``n × n``
    matrix. Fewer than 2 maps: ``nan``.
    """
    maps = np.asarray(maps, dtype=np.float64)
    n = len(maps)
    if n < 2:
        return float("nan")
    flat = maps.reshape(n, -1)
    if not np.isfinite(flat).all():
        raise ValueError("rank_agreement needs finite maps")
    r = stats.rankdata(flat, axis=1)
    r -= r.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(r, axis=1, keepdims=True)
    constant = (flat == flat[:, :1]).all(axis=1)
    z = np.where(constant[:, None], 0.0, r / np.where(constant[:, None], 1.0, norm))
    total = z.sum(axis=0)
    return float((total @ total - (z * z).sum()) / (n * (n - 1)))


def thumbnail(maps: np.ndarray, size: int = 16) -> np.ndarray:
    r"""Small maps ``[n, h, w]`` float32, ``h = min(H, size)``, ``w = min(W, size)``, by area averaging
    (:func:`torch.nn.functional.adaptive_avg_pool2d`; exact block means when ``size`` divides ``H`` and ``W``):

    .. math:: t_{ab} = \frac{1}{|B_{ab}|} \sum_{p \in B_{ab}} m_p
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or int(size) < 1:
        raise ValueError(f"maps must be [n, H, W] and size >= 1, got shape {maps.shape}, size {size}")
    out = (min(maps.shape[1], int(size)), min(maps.shape[2], int(size)))
    return F.adaptive_avg_pool2d(torch.from_numpy(np.ascontiguousarray(maps))[:, None], out)[:, 0].numpy()


def pairwise_rank_agreement(thumbs: np.ndarray, groups: np.ndarray,
                            max_per_group: int = 64) -> dict[int, tuple[float, int]]:
    """:func:`rank_agreement` within each group id ``groups`` ``[n]`` -> ``{group: (value, count)}``.

    Only the first ``max_per_group`` images of a group (by index) take part, and ``count`` is how many did
    (``min(group size, max_per_group)``); a group of one has value ``nan``.
    """
    thumbs, groups = np.asarray(thumbs), np.asarray(groups)
    if groups.shape != (len(thumbs),) or int(max_per_group) < 1:
        raise ValueError(f"groups must have shape ({len(thumbs)},) and max_per_group >= 1")
    result: dict[int, tuple[float, int]] = {}
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)[: int(max_per_group)]
        result[int(g)] = (rank_agreement(thumbs[idx]), len(idx))
    return result


class CurveMetric:
    """Stateful deletion/insertion summary: ``update(curves)`` per batch, ``summary()``, ``reset()``.

    ``summary()`` gives ``{"AUC": mean curve_auc, "curve": mean curve [steps + 1], "n": count}``.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sum: np.ndarray | None = None
        self._auc = 0.0
        self._n = 0

    def update(self, curves: np.ndarray) -> None:
        curves = np.asarray(curves, dtype=np.float64)
        auc = curve_auc(curves)
        if self._sum is not None and curves.shape[1] != len(self._sum):
            raise ValueError(f"curves have {curves.shape[1]} points, earlier ones {len(self._sum)}")
        self._sum = curves.sum(axis=0) if self._sum is None else self._sum + curves.sum(axis=0)
        self._auc += float(auc.sum())
        self._n += len(curves)

    def summary(self) -> dict[str, Any]:
        if self._n == 0 or self._sum is None:
            return {"AUC": float("nan"), "curve": np.empty(0), "n": 0}
        return {"AUC": self._auc / self._n, "curve": self._sum / self._n, "n": self._n}
