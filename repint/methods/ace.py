"""ACE (Ghorbani et al. 2019, "Towards automatic concept-based explanations"), in PyTorch.

For one interpretation (the reference images of a k-means cluster, predicted as class ``c``):

1. segment every image with SLIC at several resolutions (scikit-image);
2. turn each segment into a patch: the segment's pixels on the mean colour, cropped to its bounding
   box and resized to the input size;
3. take the patches' bottleneck activations ψ as channel means (ACE's default ``channel_mean=True``)
   and cluster them with k-means; keep the concepts that ACE's filtering keeps (common across images
   and populated enough);
4. score each concept with TCAV: a linear CAV (TCAV's ``linear`` model, an SGD-trained linear
   classifier with ``alpha = 0.01``) separates the concept's activations from the patches of random
   reference images (one random set per run, shared by all interpretations); the score is the
   fraction of the cluster's images whose directional derivative of the class logit along the CAV is
   positive. With channel means the CAV is a per-channel direction, so the derivative uses the
   spatially summed gradient ``Σ_ij ∂y_c/∂ψ_kij``. Concepts are ranked by score.

Reused on an unseen image: its segments are assigned to the nearest concept (outliers farther than
the concept's own spread are dropped, as ACE removes outlying segments) and added by concept
importance until more than ``fraction`` of the pixels are kept.

Segmenting and the patch forward passes dominate the cost (about a hundred patches per image), so
each image's SLIC labels and patch activations are cached in the process (bounded, keyed by the
model and the image's bytes): the runs of a study and the interpretations of a run reuse them.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.linear_model import SGDClassifier

from repint.methods.base import InterpretationInput, Method, register
from repint.metrics import KEEP_FRACTION
from repint.model import TRACE_LOCK, SplitModel, split_model

RESOLUTIONS = (15, 50, 80)
MEAN_COLOUR = 117.5 / 255.0


def slic_labels(image: np.ndarray, resolutions: tuple[int, ...] = RESOLUTIONS) -> np.ndarray:
    """SLIC label maps ``[len(resolutions), H, W]`` of ``image`` ``[C, H, W]``."""
    from skimage.segmentation import slic

    hwc = np.ascontiguousarray(image.transpose(1, 2, 0), dtype=np.float64)
    return np.stack([slic(hwc, n_segments=n, compactness=20, sigma=1, start_label=0, channel_axis=-1)
                     for n in resolutions]).astype(np.int32)


def masks_from_labels(labels: np.ndarray, min_area: float = 0.01) -> np.ndarray:
    """Boolean masks ``[s, H, W]`` of the segments of label maps ``[r, H, W]`` that cover at least
    ``min_area`` of the image."""
    masks = [lab == s for lab in labels for s in np.unique(lab)]
    masks = [m for m in masks if m.mean() >= min_area]
    return np.stack(masks) if masks else np.zeros((0, *labels.shape[1:]), dtype=bool)


def segments(image: np.ndarray, resolutions: tuple[int, ...] = RESOLUTIONS, min_area: float = 0.01) -> np.ndarray:
    """Boolean masks ``[s, H, W]`` of the multi-resolution SLIC segments of ``image`` ``[C, H, W]``
    that cover at least ``min_area`` of the image."""
    return masks_from_labels(slic_labels(image, resolutions), min_area)


def patches(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Patches ``[s, C, H, W]``: each segment on the mean colour, cropped to its box, resized."""
    c, h, w = image.shape
    out = np.empty((len(masks), c, h, w), dtype=np.float32)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        crop = np.where(m[None], image, MEAN_COLOUR)[:, ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
        out[i] = F.interpolate(torch.as_tensor(crop, dtype=torch.float32)[None], size=(h, w), mode="bilinear",
                               align_corners=False)[0].numpy()
    return out


def keep_concept(image_ids: np.ndarray, n_images: int, min_size: int) -> bool:
    """ACE's filter of one concept (its members' image ids): common across images, or populated."""
    size, distinct = len(image_ids), len(np.unique(image_ids))
    if size < min_size:
        return False
    highly_common = distinct > 0.5 * size
    mildly = distinct > 0.25 * size and size > 0.25 * n_images
    populated = distinct > 0.1 * size and size > 0.5 * n_images
    return bool(highly_common or mildly or populated)


def tcav_score(cav: np.ndarray, gradients: np.ndarray) -> float:
    """Fraction of images whose directional derivative ``<∂y_c/∂ψ, cav>`` is positive."""
    return float((gradients.reshape(len(gradients), -1) @ cav > 0).mean()) if len(gradients) else 0.0


def fit_cav(concept: np.ndarray, random: np.ndarray, seed: int = 0) -> np.ndarray:
    """Unit normal of a linear classifier separating concept activations from random ones."""
    x = np.concatenate([concept, random]).astype(np.float64)
    y = np.r_[np.ones(len(concept)), np.zeros(len(random))]
    clf = SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3, random_state=seed).fit(x, y)
    v = clf.coef_[0]
    return v / (np.linalg.norm(v) or 1.0)


_SPLITS: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, SplitModel]] = weakref.WeakKeyDictionary()


def _split(model: torch.nn.Module, layer: str) -> SplitModel:
    """``ψ`` and ``G`` of ``model`` (cached; an fx split shares the model's parameters and needs no
    hooks, so threads can run it at once)."""
    with TRACE_LOCK:
        per = _SPLITS.setdefault(model, {})
        if layer not in per:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                per[layer] = split_model(model, layer, allow_nonlinear_head=True)
        return per[layer]


def _class_gradients(model: torch.nn.Module, layer: str, images: np.ndarray, target: int) -> np.ndarray:
    """``Σ_ij ∂y_c/∂ψ_kij`` ``[n, K]`` for each image: the derivative along per-channel directions
    (through the split head, so no hooks are needed)."""
    sm = _split(model, layer)
    dev = next(model.parameters()).device
    with torch.no_grad():
        psi = sm.psi(torch.as_tensor(images, dtype=torch.float32, device=dev))
    psi.requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(sm.head(psi)[:, target].sum(), psi)
    return g.reshape(*g.shape[:2], -1).sum(-1).cpu().numpy()


class _SegmentCache:
    """A bounded LRU of (label maps, masks' patch activations) per (model, layer, image bytes)."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self._items: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> tuple[np.ndarray, np.ndarray] | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: tuple, labels: np.ndarray, acts: np.ndarray) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = (labels, acts)
            self.bytes += labels.nbytes + acts.nbytes
            while self.bytes > self.max_bytes and len(self._items) > 1:
                _, (lab, act) = self._items.popitem(last=False)
                self.bytes -= lab.nbytes + act.nbytes


_CACHE = _SegmentCache()


@register
class ACE(Method):
    """Concepts of the interpretation's cluster; importance by TCAV; masks of whole segments."""

    name = "ACE"
    paper_order = 4
    version = 2  # channel means, SGD CAVs, one random set per run
    needs_cluster = True
    n_concepts = 25
    min_concept_size = 4
    max_random = 400

    def _acts(self, images: np.ndarray, batch: int = 256) -> np.ndarray:
        """Channel means ``[n, K]`` of ψ for images ``[n, C, H, W]``."""
        assert self.model is not None, "bind(model, layer) first"
        psi, dev = _split(self.model, self.layer).psi, next(self.model.parameters()).device
        out = []
        with torch.no_grad():
            for i in range(0, len(images), batch):
                a = psi(torch.as_tensor(images[i: i + batch], dtype=torch.float32, device=dev))
                out.append(a.reshape(*a.shape[:2], -1).mean(-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)

    def segment_activations(self, images: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per image: its segment masks ``[s, H, W]`` and their patches' activations ``[s, K]`` (cached)."""
        out: list[tuple[np.ndarray, np.ndarray] | None] = []
        todo: list[tuple[int, tuple, np.ndarray, np.ndarray]] = []
        for i, img in enumerate(images):
            key = (id(self.model), self.layer, img.shape, hashlib.blake2b(np.ascontiguousarray(img).tobytes(),
                                                                          digest_size=16).digest())
            hit = _CACHE.get(key)
            out.append(None if hit is None else (masks_from_labels(hit[0]), hit[1]))
            if hit is None:
                labels = slic_labels(img)
                todo.append((i, key, labels, patches(img, masks_from_labels(labels))))
        if todo:  # one batched forward pass for all new patches
            acts = self._acts(np.concatenate([t[3] for t in todo]))
            start = 0
            for i, key, labels, p in todo:
                a = acts[start: start + len(p)]
                start += len(p)
                _CACHE.put(key, labels.astype(np.int16), a)
                out[i] = (masks_from_labels(labels), a)
        return out  # type: ignore[return-value]

    def interpret(self, inp: InterpretationInput) -> dict[str, np.ndarray]:
        if inp.cluster_images is None or inp.random_images is None:
            raise ValueError("ACE needs the images of the interpretation's cluster and random images.")
        self.bind(inp.model, inp.layer)
        segs = self.segment_activations(inp.cluster_images)
        a = np.concatenate([acts for _, acts in segs])
        owner_ids = np.concatenate([np.full(len(acts), i) for i, (_, acts) in enumerate(segs)])
        rand = np.concatenate([acts for _, acts in self.segment_activations(inp.random_images)])
        rand = rand[np.random.default_rng(0).permutation(len(rand))[: self.max_random]]
        k = min(self.n_concepts, len(a))
        km = KMeans(n_clusters=k, random_state=0, n_init="auto").fit(a)
        grads = _class_gradients(inp.model, inp.layer, inp.cluster_images, inp.predicted_class)
        centres, radii, scores = [], [], []
        for c in range(k):
            members = np.flatnonzero(km.labels_ == c)
            if not keep_concept(owner_ids[members], len(inp.cluster_images), self.min_concept_size):
                continue
            d = np.linalg.norm(a[members] - km.cluster_centers_[c], axis=1)
            centres.append(km.cluster_centers_[c])
            radii.append(d.max())
            scores.append(tcav_score(fit_cav(a[members], rand), grads))
        dim = a.shape[1]
        return {"concepts": np.asarray(centres, np.float32).reshape(-1, dim), "radii": np.asarray(radii, float),
                "importance": np.asarray(scores, float)}

    def _segments_in_order(self, interpretation: dict[str, np.ndarray],
                           images: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per image, its segments' masks ``[s, H, W]`` and the order in which they are kept: by the
        importance of their nearest concept, in-radius segments before outliers, nearer ones first."""
        concepts, radii, importance = (interpretation[k] for k in ("concepts", "radii", "importance"))
        rank = np.empty(len(importance), dtype=np.int64)
        rank[np.argsort(-importance, kind="stable")] = np.arange(len(importance))
        if not len(concepts):
            return [(np.zeros((0, *images.shape[-2:]), bool), np.zeros(0, dtype=np.int64))] * len(images)
        out = []
        for masks, acts in self.segment_activations(images):
            if not len(masks):
                out.append((masks, np.zeros(0, dtype=np.int64)))
                continue
            d = np.linalg.norm(acts[:, None, :] - concepts[None], axis=2)
            nearest = d.argmin(1)
            outlier = d[np.arange(len(masks)), nearest] > radii[nearest]
            out.append((masks, np.lexsort((d[np.arange(len(masks)), nearest], rank[nearest], outlier))))
        return out

    def heatmaps(self, interpretation: dict[str, np.ndarray], images: np.ndarray,
                 features: np.ndarray) -> np.ndarray:
        """Each segment painted by its place in the keeping order: ``1 - i / s`` for the ``i``-th of ``s``
        segments (the segment kept first is 1), 0 where no segment is; thresholding it keeps whole
        segments in :meth:`keep_masks`' order."""
        out = np.zeros((len(images), *images.shape[-2:]), dtype=np.float32)
        for j, (masks, order) in enumerate(self._segments_in_order(interpretation, images)):
            for i, s in enumerate(order[::-1]):  # the first kept is painted last, over any overlap
                out[j][masks[s]] = (i + 1) / len(order)
        return out

    def keep_masks(self, interpretation: dict[str, np.ndarray], images: np.ndarray, features: np.ndarray,
                   fraction: float = KEEP_FRACTION) -> np.ndarray:
        """Whole segments of each image, by the importance of their concept, until more than
        ``fraction`` of the pixels are kept (in-radius segments first, then the outliers)."""
        out = np.zeros((len(images), *images.shape[-2:]), dtype=bool)
        for j, (masks, order) in enumerate(self._segments_in_order(interpretation, images)):
            for s in order:
                out[j] |= masks[s]
                if out[j].mean() > fraction:
                    break
        return out

    def reused_maps(self, interpretation: dict[str, np.ndarray], images: np.ndarray, features: np.ndarray,
                    fractions: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """The graded maps of :meth:`heatmaps` (whole segments in keeping order, for the curves) and the
        whole-segment keep-masks of :meth:`keep_masks` at each share (segments cached between them)."""
        maps = self.heatmaps(interpretation, images, features)
        masks = [self.keep_masks(interpretation, images, features, f) for f in fractions]
        return maps, np.stack(masks) if masks else np.zeros((0, *maps.shape), bool)

    def shown_maps(self, interpretation: dict[str, np.ndarray], images: np.ndarray, features: np.ndarray,
                   fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """ACE keeps whole segments: a figure shows its keep-masks as its maps."""
        keep = self.keep_masks(interpretation, images, features, fraction)
        return keep.astype(np.float32), keep
