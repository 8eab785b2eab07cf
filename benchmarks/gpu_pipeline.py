#!/usr/bin/env python
"""The CUDA path end to end (docs/benchmarks.md, "The CUDA path end to end"): a randomly initialised
torchvision VGG-16 (no download; saved as a plain state-dict checkpoint) at 224 px on a few thousand
synthetic images (``.npz`` arrays: ``data.kind: arrays``), through the pipeline's own stage flows on
one device (``runtime.device``), ψ written by ``runtime.writers`` writers beside the forward pass.
Prints a markdown table: every stage's seconds and images/s and its speed against plain batched
forward passes of the same model on the same device, measured here too; the device's name, torch's
version and the peak device memory. Speed only: the weights are random, the images noise.

    python benchmarks/gpu_pipeline.py [--device cuda] [--images 3072] [--unseen 256] [--writers 8]
    python benchmarks/gpu_pipeline.py --device cpu --images 32 --unseen 16 --image-size 32  # a smoke test
    python benchmarks/gpu_pipeline.py --device-lacks   # the packages to carry as wheels (gpu_pipeline.sh)

The stages are ``repint run``'s flow (``repint.flows.pipeline``) and its own timings (``summary.json``'s
``timings_s``). The ψ writers busy at once are counted (``repint.tasks.ingest.IngestLanes``): every one
of ``runtime.writers`` is used only where the ingest flow's runner has ``writers + 1`` threads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

KINDS = Path("/work/.library/device/KINDS.md")  # this workplace's list of what the device's image holds
ALSO_CARRY = ("certifi", "typing-extensions")  # there, but prefect and anyio want recent ones: small, carried
NEVER_CARRY = ("repint", "torch", "torchvision", "triton", "numpy")  # the device's own builds
STAGES = ("ingest", "centres", "boundaries", "interpret", "evaluate")  # summary.json's timings_s, in order


def device_lacks(kinds: Path = KINDS) -> list[str]:
    """``name==version`` of every package repint needs (the closure of its requirements, as installed
    here) that the device's image lacks by ``kinds``' package list, plus :data:`ALSO_CARRY`."""
    import importlib.metadata as md

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    text = kinds.read_text()
    listed = text.split("Packages: ", 1)[1].split("\n", 1)[0].rstrip(".")
    there = {canonicalize_name(p.strip()) for p in listed.split(",")} - {canonicalize_name(p) for p in ALSO_CARRY}
    env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix"}
    found: dict[str, str] = {}
    never = {canonicalize_name(p) for p in NEVER_CARRY}
    todo: list[tuple[str, tuple[str, ...]]] = [("repint", ())]
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        dist = md.distribution(name)
        found[canonicalize_name(name)] = dist.version
        if name != "repint" and canonicalize_name(name) in never:
            continue  # the device's torch brings its own CUDA libraries
        for line in dist.requires or []:
            req = Requirement(line)
            wanted = not req.marker or any(req.marker.evaluate({**env, "extra": e}) for e in ("", *extras))
            if wanted:
                todo.append((req.name, tuple(sorted(req.extras))))
    skip = there | never
    return [f"{n}=={v}" for n, v in sorted(found.items()) if n not in skip]


def synthetic_data(folder: Path, n_ref: int, n_unseen: int, size: int, classes: int, seed: int) -> tuple[str, str]:
    """Two ``.npz`` archives of uint8 images ``[N, 3, size, size]`` (each a random colour plus noise, so
    that a random network's features differ between images) with random labels."""
    rng = np.random.default_rng(seed)
    paths = []
    for name, n in (("reference", n_ref), ("unseen", n_unseen)):
        images = np.empty((n, 3, size, size), np.uint8)
        for lo in range(0, n, 256):  # in slices: a few hundred MiB of int16 at most
            hi = min(lo + 256, n)
            noise = rng.integers(-48, 48, (hi - lo, 3, size, size), dtype=np.int16)
            noise += rng.integers(48, 208, (hi - lo, 3, 1, 1), dtype=np.int16)
            images[lo:hi] = np.clip(noise, 0, 255)
        path = folder / f"{name}.npz"
        np.savez(path, images=images, labels=rng.integers(0, classes, n).astype(np.int64))
        paths.append(str(path))
    return paths[0], paths[1]


def random_checkpoint(folder: Path, architecture: str, classes: int, seed: int, sample: np.ndarray,
                      mean: tuple[float, ...], std: tuple[float, ...], dev: Any) -> str:
    """torchvision's ``architecture`` with its own random initialisation, saved as a plain state dict.
    The last layer's bias is set to minus the mean logits on ``sample`` (uint8 images), so that the
    network predicts several classes (random weights alone give one class to every image, and RI needs
    two): what it predicts is still arbitrary."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    net = torchvision.models.get_model(architecture, weights=None, num_classes=classes).eval().to(dev)
    last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    x = torch.as_tensor(sample, device=dev).float() / 255
    x = (x - torch.tensor(mean, device=dev).view(1, -1, 1, 1)) / torch.tensor(std, device=dev).view(1, -1, 1, 1)
    with torch.no_grad():
        logits = torch.cat([net(x[i: i + 32]) for i in range(0, len(x), 32)])
        last.bias -= logits.mean(0)
    path = folder / f"{architecture}-random.pt"
    torch.save({k: v.cpu() for k, v in net.state_dict().items()}, path)
    return str(path)


def sync(dev: Any) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def plain_forward(spec: Any, repeats: int) -> dict[str, float]:
    """Plain batched inference of the whole network (weights from the checkpoint) on the reference
    images, host to device and logits back, as a user's own loop would: the best of ``repeats``."""
    import torch

    from repint.nets import load_network
    from repint.tasks.common import device, source

    dev, bs = device(spec), int(spec.runtime.batch_size)
    net = load_network(spec.model)[0].eval().to(dev)
    src = source(spec, "reference")
    n = len(src)
    best = math.inf
    with torch.no_grad():
        net(torch.as_tensor(src.load(np.arange(min(bs, n))), device=dev)).cpu()  # warm-up (cuDNN's choice)
        for _ in range(repeats):
            sync(dev)
            t = time.perf_counter()
            for lo in range(0, n, bs):
                net(torch.as_tensor(src.load(np.arange(lo, min(lo + bs, n))), device=dev)).float().cpu().numpy()
            sync(dev)
            best = min(best, time.perf_counter() - t)
    del net
    return {"images": n, "seconds": best, "images_per_s": n / best}


def run_stages(spec: Any) -> tuple[dict[str, float], dict[str, Any]]:
    """``repint run``'s flow (:func:`repint.flows.pipeline`) on ``spec``: its stage timings, with the
    report's as the rest of the flow's time. A flow that does nothing runs first: the temporary Prefect
    server starts there, not in the ingest's time."""
    from prefect import flow

    from repint.flows import pipeline

    flow(name="gpu-pipeline-warm-up")(lambda: None)()
    t = time.perf_counter()
    summary = pipeline(spec)
    whole = time.perf_counter() - t
    times = {k: float(v) for k, v in summary["timings_s"].items() if k in STAGES}
    times["report"] = max(whole - float(summary["timings_s"]["total"]), 1e-3)
    times["total"] = whole
    for name, seconds in times.items():
        print(f"[gpu-pipeline] {name}: {seconds:.2f} s", file=sys.stderr, flush=True)
    return times, summary


def table(info: dict[str, Any]) -> str:
    """The markdown table of :func:`main`'s measurements."""
    plain = info["plain_forward"]["images_per_s"]
    n_ref, n_uns = info["n_reference"], info["n_unseen"]
    images = {"ingest": n_ref + n_uns, "centres": n_ref, "boundaries": n_ref + n_uns, "interpret": n_ref,
              "evaluate": n_uns, "report": n_ref + n_uns, "total": n_ref + n_uns}
    rows = [("plain forward", info["plain_forward"]["images"], info["plain_forward"]["seconds"])]
    rows += [(k, images[k], info["seconds"][k]) for k in images]
    lines = [f"`benchmarks/gpu_pipeline.sh` on **{info['device_name']}** (torch {info['torch']}, "
             f"{info['architecture']} at {info['image_size']} px, random weights, ψ {info['psi_shape']} at "
             f"{info['layer']}; {n_ref} reference + {n_uns} unseen images, batch {info['batch_size']}, "
             f"chunk {info['chunk_size']}, {info['writers']} writers (at most {info['writers_busy_peak']} busy at "
             f"once), methods {', '.join(info['methods'])})", "",
             "| stage | images | seconds | images/s | speed vs plain forward |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, n, s in rows:
        rate = n / s
        lines.append(f"| {name} | {n} | {s:.2f} | {rate:,.1f} | {rate / plain:.3f}x |")
    mem = info["peak_device_memory_mib"]
    lines += ["", f"Peak device memory: {mem['plain_forward']:,.0f} MiB in plain forward, {mem['pipeline']:,.0f} MiB "
              "in the pipeline." if mem else "Peak device memory: not measured (not a CUDA device).",
              "A stage's images/s is the images it handles (ingest and boundaries: both splits; centres and "
              "interpret: the reference images; evaluate: the unseen ones, every method) per second of it (report: "
              "the rest of the flow's time, the report and the store's lock); the last column divides that by the "
              "plain forward's images/s (1.0x: as fast as inference alone)."]
    return "\n".join(lines)


def parse_table(text: str) -> dict[str, float]:
    """``{stage: speed vs plain forward}`` read back from :func:`table`'s markdown (for tests)."""
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^\| ([a-z ]+) \|.*\| ([-\d.einf]+)x \|$", text, re.M)}


def config(args: argparse.Namespace, data: tuple[str, str], checkpoint: str) -> Any:
    from repint.config import Config

    cfg = Config(name="gpu-pipeline")
    cfg.data.kind, (cfg.data.reference, cfg.data.unseen) = "arrays", data
    cfg.data.image_size = args.image_size
    cfg.model.architecture, cfg.model.checkpoint, cfg.model.layer = args.architecture, checkpoint, args.layer
    cfg.interpretation.q, cfg.interpretation.interpretations_per_class = args.q, args.per_class
    cfg.evaluation.methods, cfg.evaluation.case_studies = ["RI", "Grad-CAM"], 1
    if args.metrics:
        cfg.evaluation.metrics = args.metrics.split(",")
    rt = cfg.runtime
    rt.device, rt.batch_size, rt.chunk_size, rt.writers = args.device, args.batch, args.chunk, args.writers
    rt.task_runner, rt.n_workers = args.runner, args.workers
    return Config.model_validate(cfg.model_dump())  # validated as a config file would be


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda", help="runtime.device (cuda, cuda:N, cpu)")
    p.add_argument("--images", type=int, default=3072, help="reference images")
    p.add_argument("--unseen", type=int, default=256, help="unseen images (evaluated by every method)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--architecture", default="vgg16", help="a torchvision model, randomly initialised")
    p.add_argument("--layer", default="features.29", help="ψ's layer (VGG-16: the ReLU after conv5_3)")
    p.add_argument("--batch", type=int, default=128, help="runtime.batch_size (and the plain forward's)")
    p.add_argument("--chunk", type=int, default=256, help="runtime.chunk_size")
    p.add_argument("--writers", type=int, default=8, help="runtime.writers")
    p.add_argument("--runner", default="threads", choices=("threads", "dask"), help="runtime.task_runner")
    p.add_argument("--workers", type=int, default=4, help="runtime.n_workers")
    p.add_argument("--q", type=int, default=50, help="interpretation.q")
    p.add_argument("--per-class", type=int, default=3, help="interpretation.interpretations_per_class")
    p.add_argument("--metrics", default="", help="evaluation.metrics, comma-separated (default: the config's)")
    p.add_argument("--repeats", type=int, default=2, help="plain forward passes over the images (the best counts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="data, checkpoint and store (default: a temporary folder, removed)")
    p.add_argument("--out", help="folder for gpu_pipeline.md and gpu_pipeline.json")
    p.add_argument("--device-lacks", action="store_true", help="print the packages the device lacks, one a line")
    p.add_argument("--kinds", type=Path, default=KINDS, help="the device's package list (--device-lacks)")
    args = p.parse_args(argv)
    if args.device_lacks:
        print("\n".join(device_lacks(args.kinds)))
        return 0
    for key, value in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                       "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
                       "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}.items():
        os.environ.setdefault(key, value)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: torch {torch.__version__} sees no CUDA device", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gpu-pipeline-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        info = measure(args, work)
    text = table(info)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_pipeline.md").write_text(text + "\n")
        (out / "gpu_pipeline.json").write_text(json.dumps(info, indent=2, default=float) + "\n")
    return 0


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Data, checkpoint, plain forward, the stages: every number the table shows."""
    import torch

    from repint.config import Config
    from repint.flows.preflight import preflight
    from repint.flows.spec import build_spec
    from repint.nets import resolve_device
    from repint.tasks.common import device
    from repint.tasks.ingest import ingest_lanes

    t = time.perf_counter()
    data = synthetic_data(work, args.images, args.unseen, args.image_size, args.classes, args.seed)
    with np.load(data[0]) as z:
        sample = z["images"][:64]
    defaults = Config().data
    checkpoint = random_checkpoint(work, args.architecture, args.classes, args.seed, sample, defaults.mean,
                                   defaults.std, resolve_device(args.device))
    cfg = config(args, data, checkpoint)
    preflight(cfg, str(work / "run"))
    spec = build_spec(cfg, work / "run")
    setup = time.perf_counter() - t
    dev = device(spec)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    plain = plain_forward(spec, args.repeats)
    mem: dict[str, float] = {}
    if cuda:
        mem["plain_forward"] = torch.cuda.max_memory_allocated(dev) / 2**20
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    seconds, summary = run_stages(spec)
    if cuda:
        mem["pipeline"] = torch.cuda.max_memory_allocated(dev) / 2**20
    from repint.storage import FeatureStore

    lanes = ingest_lanes(spec)
    return {"device": str(dev), "device_name": torch.cuda.get_device_name(dev) if cuda else "cpu",
            "torch": torch.__version__, "architecture": args.architecture, "image_size": args.image_size,
            "layer": spec.model["layer"], "psi_shape": list(FeatureStore(spec.store, mode="r").shape(
                "reference/features")[1:]),
            "n_reference": summary["n_reference"], "n_unseen": summary["n_unseen"],
            "n_interpretations": summary["n_interpretations"], "batch_size": args.batch, "chunk_size": args.chunk,
            "writers": args.writers, "writers_busy_peak": lanes.peak, "chunks_written": lanes.written,
            "methods": list(summary["methods"]), "setup_seconds": setup, "plain_forward": plain,
            "seconds": seconds, "peak_device_memory_mib": mem, "cpu_count": os.cpu_count()}


if __name__ == "__main__":
    sys.exit(main())
