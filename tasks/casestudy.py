"""The case study of the paper's Figure 2: for one interpretation's input ``x``, the top similar
reference images by RI's Eq. 6 ranking (among the images its polytope covers) and by Euclidean
distance in feature space, each with every method's map of the interpretation reused on it and the
score ``Y'`` of the image masked by that map (the same keep-``fraction`` masking as AD/AI)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repint import ranking
from repint.heatmaps import display_image
from repint.methods import get_method
from repint.metrics import mask_images, softmax
from repint.model import PSI_MODULE
from repint.storage.layout import BOUNDARIES, CENTRES, INGEST, POLYTOPES
from repint.tasks.common import batched_forward, device, load_split, source
from repint.tasks.interpret import load_interpretation
from repint.tasks.runspec import RunSpec

__all__ = ["case_study", "euclidean_neighbours", "eq6_neighbours", "representative_centres"]


def representative_centres(store, n: int) -> list[int]:  # noqa: ANN001
    """The ``n`` interpretations whose polytopes cover the most reference images (ties: lowest id);
    the ones the figures, case studies and report galleries show (:func:`repint.ranking.most_representative`)."""
    return ranking.most_representative(store.read(POLYTOPES.of()["n_covered"]), n)


def eq6_neighbours(spec: RunSpec, store, centres: list[int], top: int = 4) -> dict[int, np.ndarray]:  # noqa: ANN001
    """Per centre of ``centres``: the reference images its polytope covers (its input excluded), the ``top``
    most similar to its input by Eq. 6, in one pass over the store's chunks that hold any of them
    (:func:`repint.ranking.covered_neighbours`: one chunk of ψ in memory, never a polytope's whole cover)."""
    polytopes, feats = POLYTOPES.of(), INGEST.of("reference")["features"]
    inputs = store.read(CENTRES.of()["input_index"])
    chosen = {v: ids[ids >= 0] for v in centres for ids in [store.read(polytopes["boundaries"], v)]}
    used = np.unique(np.concatenate([np.zeros(0, np.int64), *chosen.values()]))  # W at these rows only

    def queries() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for v in centres:
            x = int(inputs[v])
            covered = np.flatnonzero(store.read(polytopes["covered"], v))
            yield np.searchsorted(used, chosen[v]), store.read(feats, x), covered[covered != x]

    near = ranking.covered_neighbours(store.view(feats), store.read_rows(BOUNDARIES.of()["W"], used), queries(),
                                      top, unit=spec.interpretation.unit_normals, block=spec.chunk_size)
    return dict(zip(centres, near, strict=True))


def euclidean_neighbours(store, x: int, top: int = 4, block: int = 1024) -> np.ndarray:  # noqa: ANN001
    """The ``top`` reference images nearest to image ``x`` in ψ (flattened, Euclidean), ``x`` excluded;
    read block by block so the features never need to fit in memory at once
    (:func:`repint.ranking.euclidean_neighbours`)."""
    return ranking.euclidean_neighbours(store.view(INGEST.of("reference")["features"]), x, top, block)


def _maps_and_keep(spec: RunSpec, store, method: str, centre: int, images: np.ndarray,  # noqa: ANN001
                   feats: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    sm = load_split(spec)
    m = get_method(method).bind(sm.composed, PSI_MODULE)
    return m.shown_maps(load_interpretation(store, method, centre), images, feats, fraction)


def case_study(spec: RunSpec, store, centre: int, path: Path, eq6: np.ndarray,  # noqa: ANN001
               top: int = 4) -> dict[str, Any]:
    """Draw the case-study figure of ``centre`` into ``path`` and return what it shows: its input, ``eq6``
    (its ``top`` covered reference images most similar by Eq. 6: :func:`eq6_neighbours`) and its ``top``
    Euclidean neighbours in ψ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods, fraction, ref = spec.evaluation.methods, spec.evaluation.keep_fraction, INGEST.of("reference")
    x = int(store.read(CENTRES.of()["input_index"])[centre])
    euc = euclidean_neighbours(store, x, top)
    shown = np.concatenate([[x], eq6, euc]).astype(int)
    titles = ["input x"] + [f"Eq. 6 #{i + 1}" for i in range(len(eq6))] + [f"Euclid. #{i + 1}" for i in range(len(euc))]
    images = source(spec, "reference").load(shown)
    feats, logits = store.read_rows(ref["features"], shown), store.read_rows(ref["logits"], shown)
    cls = logits.argmax(1)
    y = softmax(logits)[np.arange(len(shown)), cls]
    sm, scores = load_split(spec), {}
    fig, axes = plt.subplots(1 + len(methods), len(shown), figsize=(1.6 * len(shown), 1.75 * (1 + len(methods))),
                             squeeze=False)
    for j in range(len(shown)):
        axes[0, j].imshow(display_image(images[j]))
        axes[0, j].set_title(f"{titles[j]}\nY={y[j]:.2f}", fontsize=7)
    for i, method in enumerate(methods, 1):
        maps, keep = _maps_and_keep(spec, store, method, centre, images, feats, fraction)
        with torch.no_grad():
            out = batched_forward(sm.model, mask_images(images, keep), spec.runtime.batch_size, device(spec))
        y_masked = softmax(out)[np.arange(len(shown)), cls]
        scores[method] = [round(float(v), 4) for v in y_masked]
        for j in range(len(shown)):
            axes[i, j].imshow(display_image(images[j]))
            axes[i, j].imshow(maps[j], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            axes[i, j].set_title(f"Y'={y_masked[j]:.2f}", fontsize=7)
        axes[i, 0].set_ylabel(method, fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Case study of interpretation {centre}: top-{top} similar by Eq. 6 (covered by P(x)) and by "
                 f"Euclidean distance in ψ; maps reused from x, Y' keeps {fraction:.0%} of the pixels", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return {"centre": centre, "input": x, "eq6": eq6.tolist(), "euclidean": euc.tolist(), "y": [round(float(v), 4)
            for v in y], "y_masked": scores, "png": path.name}
