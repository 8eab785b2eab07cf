"""``report.html``'s index of every interpretation, and one static page per interpretation beside it.

The index (section "All interpretations" of :mod:`repint.tasks.html`'s page) has a row per centre ``v``:
its class, polytope size, coverage and purity, how many unseen images RI reused it on (and how many of
those its polytope covers), and each evaluated method's mAD on the unseen images that method reused
``v`` on, with a tiny thumbnail of its input; an inline script sorts it by any column. Each row links to
``interpretations/interpretation-<v>.html``: the input, the polytope, the covered reference images most
similar to the input by Eq. 6 with RI's heat maps, and the unseen images RI reused it on (the map, the
kept pixels outlined, the masked image with ``Y -> Y'``). Thumbnails are small PNGs drawn straight from
the pixels (no matplotlib axes) and embedded as ``data:`` URIs: the pages need no network and no other
file. The store's arrays are read once for all centres, images and features once per batch of centres."""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from repint.heatmaps import display_image, overlay_map
from repint.methods import get_method
from repint.metrics import mask_images
from repint.storage import FeatureStore
from repint.storage.layout import CENTRES, EVALUATE, INGEST, POLYTOPES
from repint.tasks.casestudy import eq6_neighbours
from repint.tasks.common import logger, source
from repint.tasks.htmlfigures import png_data_uri
from repint.tasks.interpret import load_interpretation
from repint.tasks.runspec import RunSpec
from repint.variants import Variant

__all__ = ["INDEX_FOLDER", "IndexData", "index_rows", "interpretation_index", "page_href", "page_name", "per_image_ad",
           "read_index", "thumbnail"]

TEMPLATES = Path(__file__).parent / "templates"
INDEX_FOLDER = "interpretations"  # beside report.html
INDEX_THUMB_PX = 40  # the index's thumbnail of each input
INPUT_PX = 96  # the input on its own page
THUMB_PX = 72  # similar and reused images on a page
TOP_SIMILAR = 6  # covered reference images shown, by Eq. 6
MAX_REUSED_PAGE = 8  # unseen images shown (covered ones first)
BATCH = 16  # centres whose images are loaded together
PALETTE = 64  # colours of a colour thumbnail

REFERENCE = INGEST.of("reference")
UNSEEN = INGEST.of("unseen")
POLYTOPE = POLYTOPES.of()
CENTRE = CENTRES.of()


def page_name(centre: int | str) -> str:
    """The file name of interpretation ``centre``'s page (in :data:`INDEX_FOLDER`)."""
    return f"interpretation-{centre}.html"


def page_href(centre: int) -> str:
    """The page of interpretation ``centre``, relative to ``report.html``."""
    return f"{INDEX_FOLDER}/{page_name(centre)}"


def per_image_ad(y: np.ndarray, y_masked: np.ndarray) -> np.ndarray:
    """Each image's Average Drop in percent, ``100 max(0, Y - Y') / Y`` (:mod:`repint.metrics`); NaN
    where the image was not evaluated."""
    y, y_masked = np.asarray(y, dtype=np.float64), np.asarray(y_masked, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 100.0 * np.maximum(0.0, y - y_masked) / y


@dataclass
class IndexData:
    """What the index and the pages show, read from the store once: per centre (``V``) its input and
    class and its polytope's numbers; per unseen image RI's centre, coverage and scores; per evaluated
    method (label) the centre it reused on each unseen image and that image's AD."""

    n: int
    input_index: np.ndarray
    predicted_class: np.ndarray
    size: np.ndarray
    n_covered: np.ndarray
    n_other_covered: np.ndarray
    purity: np.ndarray
    reference_ids: np.ndarray
    class_names: list[str]
    ri: dict[str, np.ndarray] | None = None  # centre, covered, y, y_masked, ids, predictions
    methods: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # label -> (centre, AD)

    def class_name(self, c: int) -> str:
        return self.class_names[c] if 0 <= c < len(self.class_names) else str(c)


def read_index(spec: RunSpec, store: FeatureStore) -> IndexData:
    """The store's arrays the index needs, each read once (RI's reuse only where the run evaluates RI)."""
    methods = {}
    for label in spec.evaluation.methods:
        ev = EVALUATE.of(Variant.parse(label).key)
        if all(ev[k] in store for k in ("centre", "y", "y_masked")):
            methods[label] = (store.read(ev["centre"]), per_image_ad(store.read(ev["y"]), store.read(ev["y_masked"])))
    ri_eval = EVALUATE.of("RI")
    ri = None
    if "RI" in spec.evaluation.methods and all(ri_eval[k] in store for k in ("centre", "covered", "y", "y_masked")):
        ri = {k: store.read(ri_eval[k]) for k in ("centre", "covered", "y", "y_masked")}
        ri |= {"ids": store.read(UNSEEN["ids"]), "predictions": store.read(UNSEEN["predictions"])}
    return IndexData(
        n=int(store.shape(CENTRE["input_index"])[0]), input_index=store.read(CENTRE["input_index"]),
        predicted_class=store.read(CENTRE["predicted_class"]),
        **{k: store.read(POLYTOPE[k]) for k in ("size", "n_covered", "n_other_covered", "purity")},
        reference_ids=store.read(REFERENCE["ids"]), class_names=list(source(spec, "reference").class_names),
        ri=ri, methods=methods)


def _number(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


def index_rows(data: IndexData) -> list[dict[str, Any]]:
    """One row per centre, in id order: ``centre``, ``class``, ``input_id``, ``size``, ``n_covered``,
    ``n_other_covered``, ``purity``, ``n_reused`` / ``n_reused_covered`` (RI's unseen images; None
    without RI), ``mad`` (per method in ``data.methods``' order: ``value`` or None, ``n`` images), ``href``."""
    counts, covered = None, None
    if data.ri is not None:
        c = data.ri["centre"]
        ok = (c >= 0) & (c < data.n)
        counts = np.bincount(c[ok], minlength=data.n)
        covered = np.bincount(c[ok & data.ri["covered"].astype(bool)], minlength=data.n)
    mads = []
    for c, ad in data.methods.values():
        ok = (c >= 0) & (c < data.n) & np.isfinite(ad)
        n = np.bincount(c[ok], minlength=data.n)
        total = np.bincount(c[ok], weights=ad[ok], minlength=data.n)
        mads.append((n, total))
    rows = []
    for v in range(data.n):
        rows.append({
            "centre": v, "class": data.class_name(int(data.predicted_class[v])),
            "input_index": int(data.input_index[v]), "input_id": str(data.reference_ids[int(data.input_index[v])]),
            "size": int(data.size[v]), "n_covered": int(data.n_covered[v]),
            "n_other_covered": int(data.n_other_covered[v]), "purity": _number(data.purity[v]),
            "n_reused": None if counts is None else int(counts[v]),
            "n_reused_covered": None if covered is None else int(covered[v]),
            "mad": [{"value": float(t[v] / n[v]) if n[v] else None, "n": int(n[v])} for n, t in mads],
            "href": page_href(v)})
    return rows


def _reused(ri: dict[str, np.ndarray], centre: int, limit: int) -> np.ndarray:
    """Unseen images RI reused ``centre`` on: covered ones first, at most ``limit``, sorted (as
    :func:`repint.tasks.html.reused_on`, on arrays read once)."""
    assigned, cov = ri["centre"] == centre, ri["covered"].astype(bool)
    chosen = np.concatenate([np.flatnonzero(assigned & cov), np.flatnonzero(assigned & ~cov)])[:limit]
    return np.sort(chosen).astype(np.int64)


def thumbnail(rgb: np.ndarray, px: int, outline: np.ndarray | None = None) -> dict[str, Any]:
    """An ``[H, W, 3]`` image in ``[0, 1]`` as a small PNG: ``uri`` (a ``data:`` URI) and the ``width``
    and ``height`` to show it at, the longer side ``px`` or less. A small image is stored at its own
    size and enlarged by a whole factor by the browser (pixelated); a large one is shrunk to ``px``. A grey
    image is stored grey, a colour one with a palette of :data:`PALETTE` colours. ``outline``: a boolean
    ``[H, W]`` mask whose border is drawn in white (on the enlarged image, so the line stays thin)."""
    from PIL import Image

    h, w = rgb.shape[:2]
    pixels = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    grey = outline is None and bool((pixels == pixels[..., :1]).all())
    img = Image.fromarray(pixels[..., 0] if grey else pixels)
    k = max(1, px // max(h, w))
    shown = (w * k, h * k) if max(h, w) <= px else (max(1, round(w * px / max(h, w))),
                                                    max(1, round(h * px / max(h, w))))
    if outline is not None or max(h, w) > px:
        img = img.resize(shown, Image.Resampling.NEAREST if max(h, w) <= px else Image.Resampling.BOX)
    if outline is not None:
        mask = np.asarray(Image.fromarray(outline.astype(np.uint8) * 255).resize(shown, Image.Resampling.NEAREST)) > 0
        inner = mask.copy()
        inner[1:] &= mask[:-1]
        inner[:-1] &= mask[1:]
        inner[:, 1:] &= mask[:, :-1]
        inner[:, :-1] &= mask[:, 1:]
        drawn = np.asarray(img).copy()
        drawn[mask & ~inner] = 255
        img = Image.fromarray(drawn)
    if not grey:
        img = img.quantize(PALETTE)  # a palette PNG: about half the bytes, no visible change at this size
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return {"uri": png_data_uri(buf.getvalue()), "width": shown[0], "height": shown[1]}


def _similar(spec: RunSpec, store: FeatureStore, data: IndexData, centres: list[int],
             interps: dict[int, dict[str, np.ndarray]], near: dict[int, np.ndarray]) -> dict[int, list[dict[str, Any]]]:
    """Per centre: its input (first) and its covered reference images most similar by Eq. 6 (``near``:
    :func:`repint.tasks.casestudy.eq6_neighbours`), each with its thumbnail and, where RI was interpreted
    (``interps``: RI's interpretation of each centre), RI's heat map of the centre reused on it."""
    shown = {v: np.concatenate([[int(data.input_index[v])], near[v]]).astype(np.int64) for v in centres}
    rows = np.unique(np.concatenate(list(shown.values())))
    images = source(spec, "reference").load(rows)
    feats = store.read_rows(REFERENCE["features"], rows) if interps else None
    preds = store.read_rows(REFERENCE["predictions"], rows)
    out = {}
    for v in centres:
        at = np.searchsorted(rows, shown[v])
        maps = None if feats is None else get_method("RI").heatmaps(interps[v], images[at], feats[at])
        entries = []
        for j, (i, a) in enumerate(zip(shown[v], at, strict=True)):
            rgb = display_image(images[a])
            entries.append({"index": int(i), "id": str(data.reference_ids[int(i)]), "rank": j,
                            "class": data.class_name(int(preds[a])),
                            "image": thumbnail(rgb, INPUT_PX if j == 0 else THUMB_PX),
                            "map": thumbnail(overlay_map(rgb, maps[j]), INPUT_PX if j == 0 else THUMB_PX)
                            if maps is not None else None,
                            "thumb": thumbnail(rgb, INDEX_THUMB_PX) if j == 0 else None})
        out[v] = entries
    return out


def _reuse(spec: RunSpec, store: FeatureStore, data: IndexData, centres: list[int],
           interps: dict[int, dict[str, np.ndarray]]) -> dict[int, list[dict[str, Any]]]:
    """Per centre: the unseen images RI reused it on (at most :data:`MAX_REUSED_PAGE`, covered first),
    each with its thumbnail, RI's map with the kept pixels outlined, the masked image and ``Y``, ``Y'``."""
    ri = data.ri
    if ri is None or not interps:
        return {v: [] for v in centres}
    chosen = {v: _reused(ri, v, MAX_REUSED_PAGE) for v in centres}
    rows = np.unique(np.concatenate([np.zeros(0, np.int64), *chosen.values()]))
    if not len(rows):
        return {v: [] for v in centres}
    src = source(spec, "unseen")
    images, feats = src.load(rows), store.read_rows(UNSEEN["features"], rows)
    method, fraction, names = get_method("RI"), spec.evaluation.keep_fraction, src.class_names
    out: dict[int, list[dict[str, Any]]] = {}
    for v in centres:
        idx = chosen[v]
        out[v] = []
        if not len(idx):
            continue
        at = np.searchsorted(rows, idx)
        interp = interps[v]
        maps = method.heatmaps(interp, images[at], feats[at])
        keep = method.keep_masks(interp, images[at], feats[at], fraction)
        masked = mask_images(images[at], keep)
        for j, i in enumerate(idx):
            rgb, pred = display_image(images[at[j]]), int(ri["predictions"][i])
            out[v].append({"index": int(i), "id": str(ri["ids"][i]),
                           "class": names[pred] if 0 <= pred < len(names) else str(pred),
                           "covered": bool(ri["covered"][i]), "y": float(ri["y"][i]),
                           "y_masked": float(ri["y_masked"][i]), "image": thumbnail(rgb, THUMB_PX),
                           "map": thumbnail(overlay_map(rgb, maps[j]), THUMB_PX, outline=keep[j]),
                           "masked": thumbnail(display_image(masked[j]), THUMB_PX)})
    return out


def _environment() -> Any:
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def interpretation_index(spec: RunSpec, store: FeatureStore, out: Path, title: str) -> dict[str, Any]:
    """Write ``out/interpretations/interpretation-<v>.html`` for every centre of ``store`` (stale pages
    of centres it no longer has are removed) and return the index's template context: ``rows``
    (:func:`index_rows`, each with a ``thumb``), ``methods`` (the mAD columns' labels), ``ri`` (whether
    RI's reuse is known), ``n`` and ``seconds`` (the time the pages took)."""
    t0 = time.perf_counter()
    data = read_index(spec, store)
    rows = index_rows(data)
    methods = list(data.methods)
    ri = data.ri is not None  # RI evaluated: its interpretations, heat maps and reuse are shown
    folder = out / INDEX_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    template = _environment().get_template("interpretation.html.j2")
    written = set()
    near = eq6_neighbours(spec, store, list(range(data.n)), TOP_SIMILAR)  # one pass over the reference chunks
    for lo in range(0, data.n, BATCH):
        centres = list(range(lo, min(lo + BATCH, data.n)))
        interps = {v: load_interpretation(store, "RI", v) for v in centres} if ri else {}
        similar = _similar(spec, store, data, centres, interps, near)
        reused = _reuse(spec, store, data, centres, interps)
        for v in centres:
            row = rows[v]
            row["thumb"] = similar[v][0]["thumb"]
            path = folder / page_name(v)
            path.write_text(template.render(
                title=title, row=row, methods=methods, ri=ri, input=similar[v][0], similar=similar[v][1:],
                reused=reused[v], keep_percent=100 * spec.evaluation.keep_fraction, top_similar=TOP_SIMILAR,
                previous=page_name(v - 1) if v > 0 else None,
                next=page_name(v + 1) if v + 1 < data.n else None), encoding="utf-8")
            written.add(path.name)
    for stale in folder.glob(page_name("*")):
        if stale.name not in written:
            stale.unlink()
    seconds = time.perf_counter() - t0
    logger().info(f"report: {data.n} interpretation pages in {folder} ({seconds:.1f} s)")
    return {"rows": rows, "methods": methods, "ri": data.ri is not None, "n": data.n, "seconds": seconds,
            "folder": INDEX_FOLDER}
