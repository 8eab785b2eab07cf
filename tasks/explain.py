"""Explain new images with a store's interpretations, chunk by chunk: one PNG per image (the image, the
method's map, the kept pixels, the top similar reference images with their maps) and one record per
image, gathered into ``explanations.json`` and ``explanations.csv``. Files that do not decode are
counted skips with their reason, as in ingest. Used by ``repint explain`` and the ``explain`` flow."""

from __future__ import annotations

import csv
import functools
import json
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task

from repint.data import IMAGE_EXTENSIONS, ImageTooLargeError, is_utf8
from repint.heatmaps import display_image, overlay_map
from repint.metrics import mask_images
from repint.storage.interpretations import Interpretations
from repint.storage.layout import INGEST

__all__ = ["EXPLANATIONS", "collect_explanations", "explain_chunk", "explain_files", "image_files",
           "open_interpretations", "write_explanations"]

EXPLANATIONS = "explanations"  # explanations.json / explanations.csv
PARTS = ".parts"  # one JSON per chunk until the records are gathered
CSV_FIELDS = ("image", "predicted_class", "class_name", "probability", "method", "interpretation", "reuse",
              "violated_boundaries", "similar", "png")


def image_files(inputs: Iterable[str | Path], exclude: Path | None = None) -> tuple[list[Path], list[dict[str, str]]]:
    """The image files of ``inputs`` (files, and folders searched recursively, sorted; hidden entries and
    the folder ``exclude``, the output, left out) and the counted skips: inputs that are empty or do not
    exist, files in folders without an image extension, names that are not valid UTF-8 (as ingest)."""
    files: list[Path] = []
    skipped: list[dict[str, str]] = []
    out = exclude.expanduser().resolve() if exclude is not None else None
    for item in inputs:
        if not str(item).strip():
            skipped.append({"id": repr(str(item)), "reason": "an empty path (name a file or folder)"})
            continue
        p = Path(item).expanduser()
        if p.is_dir():
            found = (q for q in p.rglob("*") if q.is_file() and not any(part.startswith(".") for part in
                                                                           q.relative_to(p).parts))
            for f in sorted(q for q in found if out is None or out not in q.resolve().parents):
                if not is_utf8(str(f)):
                    skipped.append({"id": ascii(str(f)), "reason": "the file name is not valid UTF-8: rename it"})
                elif f.suffix.lower() in IMAGE_EXTENSIONS:
                    files.append(f)
                else:
                    skipped.append({"id": str(f), "reason": f"not an image file (extension {f.suffix or 'none'})"})
        elif p.is_file():
            files.append(p)
        else:
            skipped.append({"id": str(p), "reason": "no such file or folder"})
    return files, skipped


@functools.lru_cache(maxsize=2)
def _cached(store: str, options_json: str, checkpoint: str | None, device: str, batch_size: int) -> Interpretations:
    return Interpretations.load(store, json.loads(options_json) or None, checkpoint=checkpoint, device=device,
                                batch_size=batch_size)


def open_interpretations(store: str, storage_options: dict[str, Any] | None = None, checkpoint: str | None = None,
                         device: str = "cpu", batch_size: int = 64) -> Interpretations:
    """:meth:`Interpretations.load`, once per process for the same arguments (tasks of one flow share it)."""
    return _cached(str(store), json.dumps(storage_options or {}, sort_keys=True, default=str), checkpoint, device,
                   batch_size)


def _decode(ri: Interpretations, files: Sequence[Path]) -> tuple[np.ndarray, list[str], list[dict[str, str]]]:
    arrays, ids, skipped = [], [], []
    for f in files:
        try:
            arrays.append(ri.images([f])[0][0])
            ids.append(str(f))
        except (OSError, ValueError, ImageTooLargeError, SyntaxError) as exc:  # PIL raises all of these
            skipped.append({"id": str(f), "reason": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]})
    size, channels = int(ri.model_spec["image_size"]), len(ri.model_spec["mean"])
    x = np.stack(arrays) if arrays else np.zeros((0, channels, size, size), np.float32)
    return x, ids, skipped


def _png_name(index: int, image: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(image).stem)[:60] or "image"
    return f"{index:06d}-{stem}.png"


TILE = 112  # pixels of each panel's side in an explanation's PNG (small images are scaled up, pixels kept)


def _tile(image: np.ndarray, overlay: np.ndarray | None = None) -> np.ndarray:
    """A ``[C, H, W]`` image (and a heat map blended over it, jet at 50%) as a ``TILE``-wide uint8 panel."""
    from PIL import Image

    rgb = display_image(image) if overlay is None else overlay_map(display_image(image), overlay)

    panel = Image.fromarray(np.round(rgb * 255).astype(np.uint8))
    h, w = rgb.shape[:2]
    scale = TILE / max(h, w)
    return np.asarray(panel.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                   Image.NEAREST if scale >= 1 else Image.BILINEAR))


def _draw(path: Path, title: str, image: np.ndarray, heatmap: np.ndarray, kept: np.ndarray,
          similar: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    """One explanation as a PNG: image, map, kept pixels, then each similar reference image with its map
    (composed with Pillow: a few milliseconds per image, where a matplotlib figure takes a quarter second)."""
    from PIL import Image, ImageDraw

    shown = [("image", _tile(image)), ("map", _tile(image, heatmap)),
             ("kept pixels", _tile(mask_images(image[None], kept[None])[0])),
             *((f"similar {sid[-16:]}", _tile(img, m)) for sid, img, m in similar)]
    gap, top, caption = 4, 18, 14
    th, tw = max(t.shape[0] for _, t in shown), max(t.shape[1] for _, t in shown)
    width = max(len(shown) * (tw + gap) + gap, 6 * len(title) + 2 * gap)  # the title fits with --top 0
    canvas = Image.new("RGB", (width, top + caption + th + gap), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((gap, 3), title, fill="black")
    for j, (text, tile) in enumerate(shown):
        x = gap + j * (tw + gap)
        draw.text((x, top), text, fill="black")
        canvas.paste(Image.fromarray(tile), (x, top + caption))
    canvas.save(path, optimize=False)


def explain_files(ri: Interpretations, files: Sequence[Path], out: Path, method: str = "RI", top: int = 4,
                  first: int = 0, draw: bool = True) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Explain one chunk of image files into ``out``: a PNG per image (``draw``) and its record; the
    files that do not decode are returned as skips. ``first`` numbers the PNGs across chunks."""
    x, ids, skipped = _decode(ri, files)
    if not len(x):
        return [], skipped
    result = ri.explain(x, method=method, ids=ids)
    similar = result.similar_indices(top)
    rows = result.rows(top, ri.class_names, similar)
    m = ri.method(method)
    feats = INGEST.of("reference")["features"]
    ref = ri.reference_source() if draw and top else None
    for i, row in enumerate(rows):
        row["png"] = _png_name(first + i, row["image"]) if draw else ""
        if not draw:
            continue
        shown: list[tuple[str, np.ndarray, np.ndarray]] = []
        sids, idx = similar[i]
        if ref is not None and len(idx):
            images = ref.load(idx)
            maps = m.heatmaps(ri.interpretation(method, row["interpretation"]), images, ri.store.read_rows(feats, idx))
            shown = list(zip(sids, images, maps, strict=True))
        title = (f"{Path(row['image']).name}: class {row['class_name']} ({row['probability']:.3f}), "
                 f"interpretation {row['interpretation']} ({row['reuse']}"
                 + (f", {len(row['violated_boundaries'])} boundaries violated)" if row["reuse"] == "fallback" else ")"))
        _draw(out / row["png"], title, x[i], result.heatmaps[i], result.kept[i], shown)
    return rows, skipped


def write_explanations(out: Path, rows: list[dict[str, Any]], skipped: list[dict[str, str]],
                       meta: dict[str, Any]) -> Path:
    """``explanations.json`` (``meta``, the counts, every record and skip) and ``explanations.csv`` (one row
    per explained image); the JSON is written last, through a temporary file, so that it only ever exists
    whole."""
    with open(out / f"{EXPLANATIONS}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({**row, "violated_boundaries": " ".join(map(str, row["violated_boundaries"])),
                        "similar": " ".join(row["similar"]), "probability": f"{row['probability']:.6f}"})
    doc = {**meta, "n_explained": len(rows), "n_skipped": len(skipped),
           "n_covered": sum(r["reuse"] == "covered" for r in rows), "explanations": rows, "skipped": skipped}
    tmp = out / f".{EXPLANATIONS}.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    tmp.replace(out / f"{EXPLANATIONS}.json")
    return out / f"{EXPLANATIONS}.json"


@task(name="explain-chunk", task_run_name="explain-{chunk}", retries=1)
def explain_chunk(store: str, files: list[str], out: str, chunk: int, first: int, method: str = "RI", top: int = 4,
                  storage_options: dict[str, Any] | None = None, checkpoint: str | None = None,
                  device: str = "cpu", batch_size: int = 64) -> dict[str, int]:
    """Explain one chunk of image files: PNGs into ``out`` and the chunk's records into ``out/.parts``
    (returns counts, not the records)."""
    ri = open_interpretations(store, storage_options, checkpoint, device, batch_size)
    folder = Path(out)
    rows, skipped = explain_files(ri, [Path(f) for f in files], folder, method, top, first)
    parts = folder / PARTS
    parts.mkdir(exist_ok=True)
    (parts / f"chunk-{chunk:05d}.json").write_text(json.dumps({"rows": rows, "skipped": skipped}))
    return {"chunk": chunk, "n": len(rows), "skipped": len(skipped)}


@task(name="collect-explanations", task_run_name="collect-explanations")
def collect_explanations(out: str, n_chunks: int, skipped: list[dict[str, str]], meta: dict[str, Any]) -> str:
    """Gather the chunks' records into ``explanations.json`` / ``.csv`` and remove the parts."""
    folder = Path(out)
    rows, skips = [], list(skipped)
    for c in range(n_chunks):
        part = json.loads((folder / PARTS / f"chunk-{c:05d}.json").read_text())
        rows += part["rows"]
        skips += part["skipped"]
    path = write_explanations(folder, rows, skips, meta)
    shutil.rmtree(folder / PARTS, ignore_errors=True)  # none where there was no image
    return str(path)
