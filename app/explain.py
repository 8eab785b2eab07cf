"""``repint explain STORE IMAGE_OR_FOLDER... --out DIR``: new images explained by a run's interpretations,
without a Prefect server (the ``explain`` flow, :mod:`repint.flows.explain`, is the same per chunk)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "cmd_explain"]


def add_parser(sub: Any) -> None:
    """The ``explain`` subcommand."""
    e = sub.add_parser("explain", help="explain new images by a store's interpretations (PNGs and explanations.json)",
                       description="Apply the interpretations of a run's store to new images: for each, the "
                       "predicted class, the interpretation it reuses (the covering polytope of its class, else "
                       "the evaluation's fallback), the boundaries it violates, the method's heat map and kept "
                       "pixels, and the most similar reference images by Eq. 6. Writes one PNG per image and "
                       "explanations.json / explanations.csv into --out; files that do not decode are counted skips.")
    e.add_argument("store", help="the run's store (runs/demo/store.zarr; a study of several runs has one per run, "
                   "runs/demo/store-run0.zarr, ...; s3://...)")
    e.add_argument("images", nargs="+", help="image files and folders (searched recursively)")
    e.add_argument("--out", required=True, help="folder for the PNGs and explanations.json/.csv (new or empty)")
    e.add_argument("--method", default="RI", help="whose interpretations: RI (default) or any method the run "
                   "evaluated (Grad-CAM, RI-exact, ...)")
    e.add_argument("--top", type=int, default=4, help="similar reference images per image (default 4)")
    e.add_argument("--chunk-size", type=int, default=64, help="images per chunk (memory is bounded by it)")
    e.add_argument("--checkpoint", help="where the run's checkpoint is now, if it moved (its SHA-256 is checked)")
    e.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps (default cpu)")
    e.add_argument("--no-png", action="store_true", help="only explanations.json/.csv, no figures")
    e.add_argument("--storage-options", help="fsspec options for the store as JSON")
    e.set_defaults(fn=cmd_explain)


def _out_folder(out: str) -> Path:
    from repint.tasks.explain import EXPLANATIONS

    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file: choose a folder for the PNGs and explanations.json.")
    if (folder / f"{EXPLANATIONS}.json").exists():
        raise ValueError(f"--out {folder} already holds {EXPLANATIONS}.json: choose a new folder (results are never "
                         "overwritten) or remove it.")
    return folder


def cmd_explain(args: argparse.Namespace) -> int:
    from repint.flows.preflight import check_device
    from repint.progress import ProgressLine, progress_mode
    from repint.storage import StoreError, redact_url
    from repint.tasks.explain import explain_files, image_files, open_interpretations, write_explanations

    if args.top < 0 or args.chunk_size < 1:
        raise ValueError("--top must be >= 0 and --chunk-size >= 1.")
    folder = _out_folder(args.out)
    check_device(args.device, "--device")
    try:
        options = json.loads(args.storage_options) if args.storage_options else None
    except json.JSONDecodeError as exc:
        raise ValueError(f"--storage-options is not JSON ({exc}): e.g. '{{\"anon\": true}}'.") from None
    try:
        ri = open_interpretations(args.store, options, args.checkpoint, args.device)
        ri.method(args.method)
        if args.top and not args.no_png:
            ri.reference_source()  # the similar images drawn must be the store's: checked before any image
    except StoreError as exc:
        raise ValueError(str(exc)) from None
    files, skipped = image_files(args.images, exclude=folder)
    if not files:
        raise ValueError(f"no image files in {' '.join(args.images)} ({len(skipped)} other entries skipped).")
    folder.mkdir(parents=True, exist_ok=True)
    start, rows = time.perf_counter(), []
    mode = progress_mode(sys.stderr)
    lines = ProgressLine(len(files), "explain", sys.stderr, unit="images") if mode == "lines" else None
    from tqdm import tqdm

    try:
        with tqdm(total=len(files), desc="explain", unit="img", file=sys.stderr, leave=False,
                  disable=mode != "bar") as bar:
            for lo in range(0, len(files), args.chunk_size):
                chunk = files[lo: lo + args.chunk_size]
                r, s = explain_files(ri, chunk, folder, args.method, args.top, lo, draw=not args.no_png)
                rows += r
                skipped += s
                bar.update(len(chunk))
                if lines:
                    lines.update(lo + len(chunk))
    except KeyboardInterrupt:
        print(f"repint explain: stopped after about {len(rows)} of {len(files)} images; {folder} holds PNGs but no "
              "explanations.json: run the command again into a new --out.", file=sys.stderr)
        return 130
    meta = {"store": redact_url(args.store), "method": args.method, "top": args.top,
            "n_interpretations": ri.n_interpretations, "inputs": list(args.images), **ri.settings(args.method)}
    path = write_explanations(folder, rows, skipped, meta)
    covered = sum(r["reuse"] == "covered" for r in rows)
    how = (f"{covered} covered by a polytope, {len(rows) - covered} by the fallback {meta['fallback']}"
           if ri.method(args.method).uses_polytope else "each by its nearest centre's interpretation")
    print(f"explained {len(rows)} images by {args.method} ({how}), {len(skipped)} skipped, "
          f"{time.perf_counter() - start:.1f} s: {path}")
    return 0
