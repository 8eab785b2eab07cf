"""ACE (Ghorbani et al. 2019, "Towards automatic concept-based explanations"), in PyTorch.

For one interpretation (the reference images of a k-means cluster, predicted as class ``c``):

1. segment every image with SLIC at several resolutions (scikit-image);
2. turn each segment into a patch: the segment's pixels on the mean colour, cropped to its bounding
   box and resized to the input size;
3. take the patches' bottleneck activations ψ (flattened) and cluster them with k-means; keep the
   concepts that ACE's filtering keeps (common across images and populated enough);
4. score each concept with TCAV: a linear CAV separates the concept's activations from random
   patches (of other clusters); the score is the fraction of the cluster's images whose directional
   derivative of the class logit along the CAV is positive. Concepts are ranked by score.

Reused on an unseen image: its segments are assigned to the nearest concept (outliers farther than
the concept's own spread are dropped, as ACE removes outlying segments) and added by concept
importance until more than ``fraction`` of the pixels are kept.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression

from repint.methods.base import InterpretationInput, Method, register

RESOLUTIONS = (15, 50, 80)
MEAN_COLOUR = 117.5 / 255.0


def segments(image: np.ndarray, resolutions: tuple[int, ...] = RESOLUTIONS, min_area: float = 0.01) -> np.ndarray:
    """Boolean masks ``[s, H, W]`` of the multi-resolution SLIC segments of ``image`` ``[3, H, W]``
    that cover at least ``min_area`` of the image."""
    from skimage.segmentation import slic

    hwc = np.ascontiguousarray(image.transpose(1, 2, 0), dtype=np.float64)
    masks = []
    for n in resolutions:
        labels = slic(hwc, n_segments=n, compactness=20, sigma=1, start_label=0, channel_axis=-1)
        for s in np.unique(labels):
            m = labels == s
            if m.mean() >= min_area:
                masks.append(m)
    return np.stack(masks) if masks else np.zeros((0, *image.shape[1:]), dtype=bool)


def patches(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Patches ``[s, 3, H, W]``: each segment on the mean colour, cropped to its box, resized."""
    h, w = image.shape[1:]
    out = np.empty((len(masks), 3, h, w), dtype=np.float32)
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
    clf = LogisticRegression(max_iter=500, random_state=seed).fit(x, y)
    v = clf.coef_[0]
    return v / (np.linalg.norm(v) or 1.0)


def _class_gradients(model: torch.nn.Module, layer: str, images: np.ndarray, target: int) -> np.ndarray:
    """``∂y_c/∂ψ`` ``[n, D]`` for each image (through the split head, so no hooks are needed)."""
    from repint.model import split_model

    sm = split_model(model, layer)
    with torch.no_grad():
        psi = sm.psi(torch.as_tensor(images, dtype=torch.float32))
    psi.requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(sm.head(psi)[:, target].sum(), psi)
    return g.reshape(len(images), -1).numpy()


@register
class ACE(Method):
    """Concepts of the interpretation's cluster; importance by TCAV; masks of whole segments."""

    name = "ACE"
    needs_cluster = True
    n_concepts = 25
    min_concept_size = 4
    max_random = 400

    def _acts(self, images: np.ndarray) -> np.ndarray:
        from repint.methods.gradcam import layer_activations_batch

        assert self.model is not None, "bind(model, layer) first"
        return layer_activations_batch(self.model, self.layer, images).reshape(len(images), -1)

    def interpret(self, inp: InterpretationInput) -> dict[str, np.ndarray]:
        if inp.cluster_images is None or inp.random_images is None:
            raise ValueError("ACE needs the images of the interpretation's cluster and random images.")
        self.bind(inp.model, inp.layer)
        acts, owner = [], []
        for i, img in enumerate(inp.cluster_images):
            p = patches(img, segments(img))
            acts.append(self._acts(p))
            owner += [i] * len(p)
        a, owner_ids = np.concatenate(acts), np.asarray(owner)
        rand = np.concatenate([self._acts(patches(img, segments(img))) for img in inp.random_images])
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

    def heatmaps(self, interpretation: dict[str, np.ndarray], images: np.ndarray,
                 features: np.ndarray) -> np.ndarray:
        raise NotImplementedError("ACE interprets with whole segments, not heat maps: use keep_masks.")

    def keep_masks(self, interpretation: dict[str, np.ndarray], images: np.ndarray, features: np.ndarray,
                   fraction: float = 0.2) -> np.ndarray:
        """Whole segments of each image, by the importance of their concept, until more than
        ``fraction`` of the pixels are kept (in-radius segments first, then the outliers)."""
        concepts, radii, importance = (interpretation[k] for k in ("concepts", "radii", "importance"))
        rank = np.empty(len(importance), dtype=np.int64)
        rank[np.argsort(-importance, kind="stable")] = np.arange(len(importance))
        out = np.zeros((len(images), *images.shape[-2:]), dtype=bool)
        for j, img in enumerate(images):
            masks = segments(img)
            if not len(masks) or not len(concepts):
                continue
            acts = self._acts(patches(img, masks))
            d = np.linalg.norm(acts[:, None, :] - concepts[None], axis=2)
            nearest = d.argmin(1)
            outlier = d[np.arange(len(masks)), nearest] > radii[nearest]
            for s in np.lexsort((d[np.arange(len(masks)), nearest], rank[nearest], outlier)):
                out[j] |= masks[s]
                if out[j].mean() > fraction:
                    break
        return out
