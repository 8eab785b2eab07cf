"""The ingest's measurements: its throughput against plain batched inference, and its peak memory at
10x the images (each in a fresh process, :func:`ingest_child`)."""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from repint.app.bench.common import CHILD_ENV, Result, alternating, med, result, rounded


def rss_kib(field: str = "VmRSS") -> int:
    """Current (``VmRSS``) or peak (``VmHWM``) resident set size of this process, in KiB."""
    try:
        with open("/proc/self/status") as f:
            return int(re.search(rf"^{field}:\s+(\d+)", f.read(), re.M).group(1))  # type: ignore[union-attr]
    except OSError:
        import psutil  # not Linux: only the current RSS is available, peaks are sampled

        return psutil.Process().memory_info().rss // 1024


class PeakRSS:
    """Peak RSS inside a ``with`` block: Linux resets the high-water mark (``/proc/self/clear_refs``),
    elsewhere a thread samples the RSS every millisecond."""

    def __enter__(self) -> PeakRSS:
        self.peak, self._stop = 0, threading.Event()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method, self._thread = "VmHWM after clear_refs", None
        except OSError:
            self.method, self._thread = "sampled every 1 ms", threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, rss_kib())

    def __exit__(self, *exc: object) -> None:
        if self._thread is None:
            self.peak = rss_kib("VmHWM")
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_kib())


def ingest_child(args: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: the ingest flow's work for the reference split, its tasks called
    directly (``.fn``, no Prefect), with the memory accounted step by step (KiB)."""
    import torch  # noqa: F401  (imported before the baseline: its import is not the ingest's)

    from repint.config import Config
    from repint.flows.spec import build_spec
    from repint.tasks.common import load_split, source
    from repint.tasks.ingest import ingest_chunk, prepare_ingest
    from repint.tasks.stages import finish_stage

    mem = {"after_imports": rss_kib()}
    cfg = Config(name="bench")
    cfg.data.kind, cfg.data.reference, cfg.data.unseen = "arrays", args["reference"], args["unseen"]
    cfg.model.checkpoint = args["checkpoint"]
    cfg.runtime.task_runner, cfg.runtime.device = "threads", "cpu"
    spec = build_spec(cfg, args["out"])
    source(spec, "reference")
    load_split(spec)
    gc.collect()
    mem["baseline"] = rss_kib()  # imports + the whole source in memory (ArraySource) + the model
    t = time.perf_counter()
    with PeakRSS() as peak:
        info = prepare_ingest.fn(spec, "reference")
        for c in info["pending"]:
            ingest_chunk.fn(spec, "reference", c)
        finish_stage.fn(spec, "ingest-reference")
    mem["peak_during_ingest"], mem["after_ingest"] = peak.peak, rss_kib()
    mem["ingest_increment"] = mem["peak_during_ingest"] - mem["baseline"]
    return {"n": info["n"], "chunks": len(info["pending"]), "chunk_size": spec.chunk_size,
            "seconds": time.perf_counter() - t, "peak_method": peak.method, "rss_kib": mem}


def write_images(path: Path, n: int, seed: int, size: int = 32) -> str:
    rng = np.random.default_rng(seed)
    np.savez(path, images=rng.random((n, 3, size, size), dtype=np.float32),
             labels=np.arange(n, dtype=np.int64) % 10)
    return str(path)


def run_children(jobs: list[dict[str, Any]], env: dict[str, str], timeout: float = 900) -> list[dict[str, Any]]:
    """:func:`ingest_child` in one fresh process per job, run concurrently (RSS is per process)."""
    procs = [subprocess.Popen([sys.executable, "-m", "repint.app.bench", "--ingest-child", json.dumps(job)], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **CHILD_ENV, **env})
             for job in jobs]
    outs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=timeout)
        if proc.returncode:
            raise RuntimeError(f"ingest child failed ({proc.returncode}):\n{stderr[-3000:]}")
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    return outs


def bench_ingest_memory(n: int, factor: int = 10, max_ratio: float = 1.2, fixed_mmap_threshold: bool = False
                        ) -> Result:
    """Ratio of the ingest's peak-RSS increment for ``factor * n`` images to that for ``n`` (fresh processes).

    With ``fixed_mmap_threshold``, glibc's malloc gets a fixed mmap threshold (128 KiB) from the
    environment too (the ingest task sets it itself, :func:`repint.tasks.common.bound_chunk_memory`)."""
    import torch

    from repint.nets import VGGNet

    env = {"MALLOC_MMAP_THRESHOLD_": "131072"} if fixed_mmap_threshold else {}
    with tempfile.TemporaryDirectory(prefix="repint-bench-ingest-") as tmp:
        ckpt = Path(tmp, "vgg-small.pt")
        torch.manual_seed(0)
        torch.save(VGGNet(num_classes=10, image_size=32).state_dict(), ckpt)
        unseen = write_images(Path(tmp, "unseen.npz"), 20, seed=1)
        runs = run_children([{"reference": write_images(Path(tmp, f"reference-{size}.npz"), size, seed=0),
                              "unseen": unseen, "checkpoint": str(ckpt), "out": str(Path(tmp, f"out-{size}"))}
                             for size in (n, factor * n)], env)
    small, big = (r["rss_kib"]["ingest_increment"] for r in runs)
    ratio = big / max(small, 1)
    stage = f"ingest memory: peak RSS increment at {factor * n:,} vs {n:,} images" + (
        ", malloc mmap threshold from the environment" * fixed_mmap_threshold)
    return result(stage, ratio, f"<= {max_ratio:g}x (within {100 * (max_ratio - 1):.0f}%)", ratio <= max_ratio,
                  f"{big / 1024:,.1f} MiB", f"{small / 1024:,.1f} MiB", env=env,
                  increments_mib=[round(r["rss_kib"]["ingest_increment"] / 1024, 1) for r in runs], runs=runs)


def ingest_setup(tmp: str, n: int, size: int = 32, seed: int = 0) -> dict[str, Any]:
    """Random ``n`` images (3 x size x size, ``.npz``), a freshly initialised ``vgg-small``
    checkpoint, and a function making the ``RunSpec`` of a fresh store (``data.kind: arrays``, CPU)."""
    import torch

    from repint.config import Config
    from repint.flows.spec import build_spec
    from repint.nets import VGGNet

    ckpt = Path(tmp, "vgg-small.pt")
    torch.manual_seed(seed)
    torch.save(VGGNet(num_classes=10, image_size=size).state_dict(), ckpt)
    ref = write_images(Path(tmp, "reference.npz"), n, seed=seed, size=size)
    uns = write_images(Path(tmp, "unseen.npz"), 20, seed=seed + 1, size=size)
    counter = iter(range(10**6))

    def spec() -> Any:
        cfg = Config(name="bench")
        cfg.data.kind, cfg.data.reference, cfg.data.unseen = "arrays", ref, uns
        cfg.data.image_size = size
        cfg.model.checkpoint = str(ckpt)
        cfg.runtime.task_runner, cfg.runtime.device = "threads", "cpu"
        out = Path(tmp, f"out-{next(counter)}")
        shutil.rmtree(out, ignore_errors=True)
        return build_spec(cfg, str(out))

    return {"spec": spec}


def run_ingest(spec: Any, workers: int) -> int:
    """The ingest flow's work for the reference split, its tasks called directly (``.fn``, no Prefect
    orchestration) on a pool of ``workers`` threads as the flow's ``ThreadPoolTaskRunner`` does."""
    from concurrent.futures import ThreadPoolExecutor

    from repint.tasks.ingest import ingest_chunk, prepare_ingest
    from repint.tasks.stages import finish_stage

    info = prepare_ingest.fn(spec, "reference")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda c: ingest_chunk.fn(spec, "reference", c), info["pending"]))
    finish_stage.fn(spec, "ingest-reference")
    return info["n"]


def bench_ingest_throughput(n: int, repeats: int, min_ratio: float = 0.85, workers: int = 2) -> Result:
    """Ingest throughput (ψ, logits, predictions of ``n`` images into a fresh Zarr store: every task
    of the stage, ``workers`` threads as in the flow) against plain ``batched_forward`` of the same
    model over the same images held in memory; alternating rounds, medians."""
    import torch

    from repint.tasks.common import batched_forward, load_split, source

    with tempfile.TemporaryDirectory(prefix="repint-bench-ingest-") as tmp:
        setup = ingest_setup(tmp, n)
        spec0 = setup["spec"]()
        sm = load_split(spec0)
        images = source(spec0, "reference").load(np.arange(n))
        bs = int(spec0.runtime.batch_size)
        dev = torch.device("cpu")

        def plain() -> None:
            batched_forward(sm.model, images, bs, dev)

        def ingest() -> None:
            run_ingest(setup["spec"](), workers)

        times = alternating({"plain": plain, "ingest": ingest}, repeats)
        chunk_size = spec0.chunk_size
    ingest_ips, plain_ips = n / med(times["ingest"]), n / med(times["plain"])
    ratio = ingest_ips / plain_ips
    return result(f"ingest: ψ, logits, predictions of {n:,} images (3x32x32, vgg-small) into Zarr", ratio,
                  f">= {min_ratio:g}x", ratio >= min_ratio, f"{ingest_ips:,.0f} img/s",
                  f"{plain_ips:,.0f} img/s (plain batched forward in memory)", n=n, workers=workers,
                  chunk_size=chunk_size, batch_size=bs, ingest_times_s=rounded(times["ingest"]),
                  plain_times_s=rounded(times["plain"]))

