#!/usr/bin/env python
"""The ImageNet-scale ingest point of docs/scaling.md, on a GPU: VGG-19's forward pass at 224x224
(ψ = features up to the ReLU after conv5_4, 512x14x14; randomly initialised weights: speed only)
against compressing and writing that ψ into Zarr on one CPU core (zstd level 1, the store's codec,
and uncompressed; skipped where zarr is not installed). Prints JSON.

    python benchmarks/gpu_ingest.py [--batch 64] [--batches 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=10)
    args = p.parse_args()
    import torchvision

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = torchvision.models.vgg19().eval().to(dev)
    psi, head = net.features[:36], torch.nn.Sequential(net.features[36:], net.avgpool, torch.nn.Flatten(),
                                                       net.classifier)
    x = torch.rand(args.batch, 3, 224, 224, device=dev)
    out = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "torch": torch.__version__,
           "batch": args.batch}
    with torch.no_grad():
        for _ in range(3):
            f = psi(x)
            head(f)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times, copy_times = [], []
        for _ in range(args.batches):
            t = time.perf_counter()
            f = psi(x)
            head(f)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
            t = time.perf_counter()
            feats = f.float().cpu().numpy()
            copy_times.append(time.perf_counter() - t)
    out["psi_shape"] = list(feats.shape[1:])
    out["forward_images_per_s"] = round(args.batch / statistics.median(times), 1)
    out["to_host_images_per_s"] = round(args.batch / statistics.median(copy_times), 1)
    torch.set_num_threads(1)
    try:
        import zarr
        from zarr.codecs import ZstdCodec
    except ImportError:  # a GPU machine without zarr: the forward pass only
        print(json.dumps(out, indent=2))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        g = zarr.open_group(tmp + "/s.zarr", mode="w")
        for name, codec in (("zstd level 1", [ZstdCodec(level=1)]), ("none", None)):
            a = g.create_array(name.replace(" ", "-"), shape=(args.batch * 4, *feats.shape[1:]),
                               chunks=(args.batch, *feats.shape[1:]), dtype="f4", compressors=codec)
            w = []
            for i in range(4):
                t = time.perf_counter()
                a[i * args.batch:(i + 1) * args.batch] = feats
                w.append(time.perf_counter() - t)
            size = sum(f.stat().st_size for f in Path(tmp, "s.zarr", name.replace(" ", "-"), "c").rglob("*")
                       if f.is_file())
            out[f"write_{name}"] = {"images_per_s_one_thread": round(args.batch / statistics.median(w), 1),
                                    "mib_per_s": round(feats.nbytes / 2**20 / statistics.median(w), 1),
                                    "ratio": round(4 * feats.nbytes / size, 3)}
    out["zeros_in_psi_random_weights"] = round(float((feats == 0).mean()), 4)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
