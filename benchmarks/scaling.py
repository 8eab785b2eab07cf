#!/usr/bin/env python
"""Measured points behind docs/scaling.md: the feature store's size per value with and without
compression and in float16 (one measured chunk of real ψ), how the solver's time grows with N and
|Q|, and the sign matrix of 100,000 images. Writes ``benchmarks/results/scaling.json``; the other
points come from ``repint bench`` (``benchmarks/results/bench.json``).

    python benchmarks/scaling.py [--store runs/cats-vs-dogs-bench/store-run0.zarr]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from repint.app.bench import PSI_SHAPE, bench_signs, load_average, med, sign_problem

CODECS = {"none": None, "zstd level 1 (features' codec)": [ZstdCodec(level=1)],
          "zstd level 3 (Zarr's default)": [ZstdCodec(level=3)]}


def store_sizes(features: np.ndarray, repeats: int = 5) -> list[dict]:
    """Bytes per value, write and read time of one chunk of ``features`` per codec, float32 and float16."""
    out = []
    with tempfile.TemporaryDirectory(prefix="repint-scaling-") as tmp:
        g = zarr.open_group(str(Path(tmp, "g.zarr")), mode="w")
        for dtype in ("f4", "f2"):
            x = features.astype(dtype)
            for name, codec in CODECS.items():
                path = f"{dtype}-{len(out)}"
                a = g.create_array(path, shape=x.shape, chunks=x.shape, dtype=dtype, compressors=codec)
                w, r = [], []
                for _ in range(repeats):
                    t = time.perf_counter()
                    a[...] = x
                    w.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    a[...]
                    r.append(time.perf_counter() - t)
                size = sum(f.stat().st_size for f in Path(tmp, "g.zarr", path, "c").rglob("*") if f.is_file())
                err = float(np.abs(x.astype(np.float32) - features).max())
                out.append({"dtype": {"f4": "float32", "f2": "float16"}[dtype], "codec": name,
                            "bytes_per_value": round(size / features.size, 4),
                            "ratio_to_raw_float32": round(features.nbytes / size, 3),
                            "write_ms": round(1e3 * med(w), 2), "read_ms": round(1e3 * med(r), 2),
                            "max_abs_error": err, "max_value": float(features.max())})
    return out


def solver_growth(repeats: int = 3) -> list[dict]:
    """Median time of one greedy solve at several N and |Q| (random features and hyperplanes)."""
    from repint.solver import greedy_polytope

    out = []
    for n, q in ((100_000, 50), (300_000, 50), (1_000_000, 50), (100_000, 200), (100_000, 800)):
        signs, i, other = sign_problem(n, q)
        greedy_polytope(signs, i, other)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            poly = greedy_polytope(signs, i, other)
            times.append(time.perf_counter() - t)
        out.append({"n": n, "q": q, "ms": round(1e3 * med(times), 1), "polytope_size": len(poly.boundaries),
                    "sign_matrix_mib": round(signs.nbytes / 2**20, 1)})
        del signs
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default="runs/cats-vs-dogs-bench/store-run0.zarr",
                   help="a RepInt store whose reference/features give the measured chunk (else synthetic ReLU)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/scaling.json"))
    args = p.parse_args()
    if Path(args.store).exists():
        a = zarr.open_group(args.store, mode="r")["reference/features"]
        feats, source = np.asarray(a[: a.chunks[0]]), f"{args.store}: reference/features[:{a.chunks[0]}]"
    else:
        rng = np.random.default_rng(0)
        feats, source = np.maximum(rng.standard_normal((256, 64, 8, 8), dtype=np.float32), 0), "synthetic ReLU"
    load_before = load_average()
    signs = bench_signs(100_000, PSI_SHAPE, 50, repeats=2)
    result = {"chunk": {"source": source, "shape": list(feats.shape), "zeros": round(float((feats == 0).mean()), 4)},
              "store_sizes": store_sizes(feats), "solver_growth": solver_growth(),
              "sign_matrix_100k": {k: signs[k] for k in ("stage", "measured", "reference", "ratio")} | signs["details"],
              "load_average_before": load_before, "load_average_after": load_average(), "cpus": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
