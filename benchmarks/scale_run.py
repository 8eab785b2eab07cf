#!/usr/bin/env python
"""A synthetic scale run (docs/scaling.md, "A synthetic scale run"): ``repint run`` end to end on N reference
images whose ψ is 512x7x7 (synthetic 3x8x8 images and a model brought as ``module:function``,
:mod:`repint.app.bench.pipeline`), every stage for real, with the seconds and the peak RSS of the whole
process tree (the run, its Prefect server, its Dask workers) per stage.

    python benchmarks/scale_run.py --n 200000          # the documented run (ψ: 20 GB of float32, stored compressed)
    python benchmarks/scale_run.py --n 20000           # the comparison point
    python benchmarks/scale_run.py --table             # the tables of every run recorded so far

Each run replaces the entry of its N in ``benchmarks/results/scale_run.json`` and prints its table. The
inputs are cached under ``--work`` (default ``$REPINT_BENCH_DATA/scale-run``); the run's output folder
(its store: about 27 KB per reference image) is deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from repint.app.bench.common import DEFAULT_OUT, load_average
from repint.app.bench.kmeans import bench_data_dir
from repint.app.bench.pipeline import SCALE_PSI, markdown, run_config, run_pipeline, write_inputs

RESULTS = DEFAULT_OUT / "scale_run.json"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=200_000, help="reference images (default 200,000)")
    p.add_argument("--unseen", type=int, default=2_000, help="unseen images (default 2,000)")
    p.add_argument("--per-class", type=int, default=10, help="interpretation.interpretations_per_class (default 10)")
    p.add_argument("--q", type=int, default=50, help="interpretation.q (default 50)")
    p.add_argument("--chunk-size", type=int, default=512, help="runtime.chunk_size and batch_size (default 512)")
    p.add_argument("--kmeans", help="interpretation.kmeans: auto|exact|minibatch|dask (default: the config's)")
    p.add_argument("--methods", default="RI,Grad-CAM", help="evaluation.methods (default RI,Grad-CAM)")
    p.add_argument("--metrics", help="evaluation.metrics, comma-separated (default: the config's)")
    p.add_argument("--case-studies", type=int, default=1, help="evaluation.case_studies (default 1)")
    p.add_argument("--device", default="cpu", help="runtime.device (default cpu)")
    p.add_argument("--n-workers", type=int, default=2, help="runtime.n_workers of the local Dask cluster (default 2)")
    p.add_argument("--work", type=Path, help="folder for the inputs and the run (default $REPINT_BENCH_DATA/scale-run)")
    p.add_argument("--keep", action="store_true", help="keep the run's output folder (its store) afterwards")
    p.add_argument("--json", type=Path, default=RESULTS, help=f"results file (default {RESULTS})")
    p.add_argument("--table", action="store_true", help="print the tables of the runs in --json and exit")
    return p


def _machine() -> dict[str, Any]:
    import psutil

    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "memory_available_gib": round(psutil.virtual_memory().available / 2**30, 1)}


def scale_run(args: argparse.Namespace) -> dict[str, Any]:
    """Inputs (cached), the run, its record."""
    work = args.work or bench_data_dir() / "scale-run"
    data = work / f"data-{args.n}-{args.unseen}-seed0"
    ready, t = data / "ready", time.perf_counter()
    if not (ready / "unseen.npz").is_file():  # written whole, then renamed: a folder "ready" is complete
        shutil.rmtree(data, ignore_errors=True)
        write_inputs(data / "tmp", args.n, args.unseen)
        (data / "tmp").rename(ready)
    inputs_s = time.perf_counter() - t
    inputs = {"checkpoint": str(ready / "model.pt"), "reference": {"path": str(ready / "reference.npz")},
              "unseen": {"path": str(ready / "unseen.npz")}}
    cfg = run_config(inputs, methods=tuple(args.methods.split(",")), per_class=args.per_class, q=args.q,
                     chunk_size=args.chunk_size, kmeans=args.kmeans,
                     metrics=args.metrics.split(",") if args.metrics else None, case_studies=args.case_studies,
                     device=args.device, n_workers=args.n_workers)
    out = work / f"run-{args.n}"
    shutil.rmtree(out, ignore_errors=True)
    load_before = load_average()
    record = run_pipeline(cfg, out)
    store = out / "store.zarr"
    record["store_gib"] = round(sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**30, 2)
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return {"n": args.n, "date": datetime.now(UTC).isoformat(timespec="seconds"), "psi": list(SCALE_PSI),
            "inputs_seconds": round(inputs_s, 1), "config": cfg, "machine": _machine(),
            "load_average_before": load_before, "load_average_after": load_average(), **record}


def tables(runs: list[dict[str, Any]]) -> str:
    """Per run its stage table, then one line per run: N, seconds, peak RSS and PSS of the tree, store size."""
    parts = []
    for r in sorted(runs, key=lambda r: r["n"]):
        parts.append(f"N = {r['n']:,} reference, {r['n_unseen']:,} unseen images, {r['n_interpretations']} "
                     f"interpretations, ψ {'x'.join(map(str, r['psi']))} ({r['date']}, load "
                     f"{r['load_average_before']} before, {r['load_average_after']} after):\n\n{markdown(r)}")
    lines = ["| N | whole run (s) | peak RSS (MiB, tree) | peak PSS (MiB) | store (GiB) |",
             "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['n']:,} | {r['seconds']:,.0f} | {r['peak_rss_mib']:,.0f} | {r['peak_pss_mib']:,.0f} | "
              f"{r.get('store_gib', '-')} |" for r in sorted(runs, key=lambda r: r["n"])]
    return "\n\n".join([*parts, "\n".join(lines)])


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    runs = json.loads(args.json.read_text())["runs"] if args.json.is_file() else []
    if not args.table:
        record = scale_run(args)
        runs = [r for r in runs if r["n"] != record["n"]] + [record]
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": sorted(runs, key=lambda r: r["n"])}, indent=2, default=float) + "\n")
        print(f"written: {args.json}", file=sys.stderr)
    print(tables(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
