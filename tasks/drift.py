r"""Drift between two versions of the interpretations (``reinterpret`` after retraining).

The centres of two versions are k-means centres of two feature spaces, so centre ``v`` of one is not
centre ``v`` of the other. Centres are matched within their predicted class by the overlap of the
reference images their polytopes cover (Hungarian assignment on the Jaccard index
:math:`J(A, B) = |A \cap B| / |A \cup B|` over image ids; the maths is :mod:`repint.drift`). For each
matched pair the report gives

- ``jaccard``: the overlap of covered reference images;
- ``size_prev``, ``size``, ``size_change``: the number of boundaries :math:`|P|` before and after;
- ``heatmap_correlation``: the mean over shared images of the Pearson correlation of the previous
  and the new RI heat map of the same image (each version's maps come from its own stored ψ and
  channel weights, so the previous checkpoint is not needed any more);
- ``mAD_prev``, ``mAD``, ``mAI_prev``, ``mAI``: RI's AD / AI on the unseen images assigned to the
  centre in each version;

and, per method, the change of mAD / mAI over the whole unseen set, and how many distinct polytopes
(covered sets) each version's centres give (``n_distinct_polytopes``, ``n_distinct_polytopes_prev``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from repint.drift import align_covers, compared_images, jaccard_matrix, match_centres, pearson_rows
from repint.methods import get_method
from repint.metrics import AverageDropIncrease
from repint.ranking import distinct_polytopes
from repint.storage import FeatureStore
from repint.storage.layout import CENTRES, EVALUATE, INGEST, POLYTOPES

RI_EVALUATION = EVALUATE.of("RI")
REFERENCE = INGEST.of("reference")
POLYTOPE = POLYTOPES.of()
CENTRE = CENTRES.of()

__all__ = ["covered_ids", "drift_markdown", "drift_report"]

MAX_IMAGES = 32  # heat maps compared per centre pair


def covered_ids(store: FeatureStore) -> tuple[np.ndarray, np.ndarray]:
    """Reference ids and the boolean ``[V, N]`` cover of each polytope."""
    ids = np.array([str(i) for i in store.read(REFERENCE["ids"])])  # zarr 3 reads strings as StringDType
    return ids, store.read(POLYTOPE["covered"]).astype(bool)


def _ri_maps(store: FeatureStore, centre: int, rows: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from repint.tasks.interpret import load_interpretation

    feats = store.read_rows(REFERENCE["features"], rows)
    dummy = np.zeros((len(rows), 1, *size), np.float32)  # heat maps only need the image size
    return get_method("RI").heatmaps(load_interpretation(store, "RI", centre), dummy, feats)


def _centre_scores(store: FeatureStore) -> dict[int, dict[str, float]]:
    """RI's AD / AI per centre over the unseen images assigned to it."""
    if RI_EVALUATION["centre"] not in store:
        return {}
    centre = store.read(RI_EVALUATION["centre"])
    y, ym = store.read(RI_EVALUATION["y"]), store.read(RI_EVALUATION["y_masked"])
    out = {}
    for v in np.unique(centre):
        m = AverageDropIncrease()
        m.update(y[centre == v], ym[centre == v])
        s = m.summary()
        out[int(v)] = {"AD": s["AD"], "AI": s["AI"], "n": s["n"]}
    return out


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), digits)


def drift_report(prev: FeatureStore, new: FeatureStore, image_size: int, prev_methods: dict[str, Any],
                 new_methods: dict[str, Any]) -> dict[str, Any]:
    """The drift of ``new`` against ``prev`` (two complete stores of the same reference images, or
    of overlapping ones: images are identified by their ids)."""
    ids_p, cov_p = covered_ids(prev)
    ids_n, cov_n = covered_ids(new)
    aligned = align_covers(ids_n, cov_n, ids_p, cov_p)
    jac = jaccard_matrix(aligned.new, aligned.prev)
    inp_n, inp_p = new.read(CENTRE["input_index"]), prev.read(CENTRE["input_index"])
    cls_n, cls_p = new.read(REFERENCE["predictions"])[inp_n], prev.read(REFERENCE["predictions"])[inp_p]
    match = match_centres(jac, cls_n, cls_p)
    size_n, size_p = new.read(POLYTOPE["size"]), prev.read(POLYTOPE["size"])
    scores_n, scores_p = _centre_scores(new), _centre_scores(prev)
    centres = []
    for v, j in enumerate(match):
        entry: dict[str, Any] = {"centre": v, "class": int(cls_n[v]), "input": str(ids_n[inp_n[v]]),
                                 "size": int(size_n[v]), "mAD": _round(scores_n.get(v, {}).get("AD")),
                                 "mAI": _round(scores_n.get(v, {}).get("AI")), "previous_centre": j}
        if j is not None:
            rows_n, rows_p = compared_images(aligned, v, j, ids_n[inp_n[v]], ids_p[inp_p[j]], MAX_IMAGES)
            corr = float("nan")
            if len(rows_n):
                size = (image_size, image_size)
                corr = float(np.nanmean(pearson_rows(_ri_maps(new, v, rows_n, size), _ri_maps(prev, j, rows_p, size))))
            entry.update({
                "jaccard": _round(jac[v, j]), "size_prev": int(size_p[j]), "size_change": int(size_n[v] - size_p[j]),
                "heatmap_correlation": _round(corr), "n_compared": int(len(rows_n)),
                "mAD_prev": _round(scores_p.get(j, {}).get("AD")), "mAI_prev": _round(scores_p.get(j, {}).get("AI"))})
        centres.append(entry)
    matched = [c for c in centres if c["previous_centre"] is not None]
    methods = {m: {f"{k}{suffix}": value for k in ("mAD", "mAI") for suffix, value in
                   (("_prev", prev_methods[m][k]), ("", r[k]), ("_change", round(r[k] - prev_methods[m][k], 4)))}
               for m, r in new_methods.items() if m in prev_methods}

    def mean(key: str) -> float | None:
        vals = [c[key] for c in matched if c.get(key) is not None]
        return _round(float(np.mean(vals))) if vals else None

    return {"n_centres": len(centres), "n_centres_prev": len(cov_p), "n_matched": len(matched),
            "n_distinct_polytopes": len(np.unique(distinct_polytopes(cov_n))),
            "n_distinct_polytopes_prev": len(np.unique(distinct_polytopes(cov_p))),
            "shared_reference_images": int(np.isin(ids_n, ids_p).sum()),
            "mean_jaccard": mean("jaccard"), "mean_heatmap_correlation": mean("heatmap_correlation"),
            "mean_abs_size_change": _round(float(np.mean([abs(c["size_change"]) for c in matched])))
            if matched else None, "centres": centres, "methods": methods}


def _fmt(x: Any, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _distinct(drift: dict[str, Any], suffix: str) -> str:
    n = drift.get(f"n_distinct_polytopes{suffix}")  # absent from drift reports written before it was counted
    return "" if n is None else f" ({n} distinct polytopes)"


def drift_markdown(drift: dict[str, Any], prev_version: int, version: int, changed: list[str]) -> str:
    """The drift report as markdown (the Prefect artifact and ``drift.md``)."""
    lines = [f"# Drift: version {prev_version} → {version}", "",
             f"Changed since version {prev_version}: {', '.join(changed) or 'nothing'}. "
             f"{drift['n_matched']} of {drift['n_centres']} centres{_distinct(drift, '')} matched to the previous "
             f"{drift['n_centres_prev']}{_distinct(drift, '_prev')}; mean Jaccard of covered reference images "
             f"{_fmt(drift['mean_jaccard'], 3)}, mean heat-map correlation "
             f"{_fmt(drift['mean_heatmap_correlation'], 3)}, mean |Δ|P|| {_fmt(drift['mean_abs_size_change'], 2)}.",
             "", "| method | mAD before | mAD after | ΔmAD | mAI before | mAI after | ΔmAI |",
             "|---|---|---|---|---|---|---|"]
    for m, r in drift["methods"].items():
        lines.append(f"| {m} | {r['mAD_prev']:.2f} | {r['mAD']:.2f} | {r['mAD_change']:+.2f} | {r['mAI_prev']:.2f} | "
                     f"{r['mAI']:.2f} | {r['mAI_change']:+.2f} |")
    lines += ["", "| centre | class | previous | Jaccard | \\|P\\| before → after | heat-map corr. | "
              "RI mAD before → after | RI mAI before → after |", "|---|---|---|---|---|---|---|---|"]
    for c in drift["centres"]:
        if c["previous_centre"] is None:
            lines.append(f"| {c['centre']} | {c['class']} | new | – | – → {c['size']} | – | – → {_fmt(c['mAD'])} | "
                         f"– → {_fmt(c['mAI'])} |")
            continue
        lines.append(f"| {c['centre']} | {c['class']} | {c['previous_centre']} | {_fmt(c['jaccard'], 3)} | "
                     f"{c['size_prev']} → {c['size']} | {_fmt(c['heatmap_correlation'], 3)} | "
                     f"{_fmt(c['mAD_prev'])} → {_fmt(c['mAD'])} | {_fmt(c['mAI_prev'])} → {_fmt(c['mAI'])} |")
    return "\n".join(lines)
