"""The whole pipeline's memory: ``repint run`` end to end, as a subprocess, on synthetic data whose ψ is
512x7x7, with the peak RSS of its whole process tree (the run, its Prefect server, its Dask workers)
sampled every 0.2 s and split by stage along the run's own log lines.

The data: ``N`` images of 3x8x8 (uint8, ten smooth prototypes plus noise, in an ``.npz`` of ``data.kind:
arrays``) and a model a user could bring as ``module:function`` (:func:`scale_net`: a 2x2 convolution
3 -> 512 and its ReLU, ψ = ``relu`` at 512x7x7, then a global max-pool and a linear head to ten classes),
its weights a plain state dict. The convolution's biases are calibrated so that the ReLU zeroes
:data:`ZERO_SHARE` of ψ (ReLU features are sparse, and the store compresses them), the head so that the
ten classes are predicted about equally often; the labels are the model's predictions. Every stage
then runs for real: ingest computes ψ and writes it compressed, k-means, Q, signs, solves, assignment,
interpretations and evaluation.

``benchmarks/scale_run.py`` runs one such run at any size (200,000: ``docs/scaling.md``);
:func:`bench_pipeline_memory` is ``repint bench``'s line: the tree's peak at ``10 N`` against ``N``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from repint.app.bench.common import CHILD_ENV, Result, result

SCALE_PSI = (512, 7, 7)
IMAGE_SIZE = 8  # the smallest data.image_size: a 2x2 convolution makes it 7x7
N_CLASSES = 10
ARCHITECTURE = "repint.app.bench.pipeline:scale_net"
LAYER = "relu"
MEAN, STD = 0.5, 0.25  # data.mean and data.std of the runs (the model is calibrated through them)
ZERO_SHARE = 0.75  # share of ψ's values the ReLU zeroes
BLOCK = 4_096  # images are drawn in seeded blocks: image i is the same whatever N
CALIBRATION = BLOCK << 30  # the first image of the calibration blocks, far beyond any run's
SAMPLE_EVERY = 0.2  # seconds between two samples of the process tree's RSS


class ScaleNet(nn.Module):
    """ψ = ``relu(conv(x))``, 512x7x7 on 8x8 images; G = global max-pool, flatten, linear (piecewise linear)."""

    def __init__(self, num_classes: int = N_CLASSES, width: int = SCALE_PSI[0]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, kernel_size=2)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))


def scale_net(num_classes: int = N_CLASSES) -> nn.Module:
    """``model.architecture: repint.app.bench.pipeline:scale_net`` (``model.layer: relu``)."""
    return ScaleNet(num_classes)


def _prototypes(seed: int) -> np.ndarray:
    coarse = np.random.default_rng([seed, 1 << 30]).random((N_CLASSES, 3, 2, 2))
    return coarse.repeat(4, axis=2).repeat(4, axis=3)


def synthetic_images(lo: int, hi: int, seed: int = 0, prototypes: bool = False
                     ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Images ``lo .. hi - 1`` (uint8 ``[hi - lo, 3, 8, 8]``): each 0.7 x one of ten smooth prototypes
    plus 0.3 x uniform noise, drawn in seeded blocks of :data:`BLOCK` (the same images whatever the range);
    with ``prototypes``, also which prototype each image is made of."""
    protos, images, which = _prototypes(seed), [], []
    for b in range(lo // BLOCK, -(-hi // BLOCK)):
        rng = np.random.default_rng([seed, b])
        cls = rng.integers(N_CLASSES, size=BLOCK)
        block = 0.7 * protos[cls] + 0.3 * rng.random((BLOCK, 3, IMAGE_SIZE, IMAGE_SIZE))
        keep = slice(max(lo - b * BLOCK, 0), hi - b * BLOCK)
        images.append((255 * block[keep]).round().astype(np.uint8))
        which.append(cls[keep])
    x = np.concatenate(images) if images else np.zeros((0, 3, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    return (x, np.concatenate(which) if which else np.zeros(0, np.int64)) if prototypes else x


def _normalised(images: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(images.astype(np.float32) / 255.0) - MEAN) / STD


def scale_model(seed: int = 0, calibration: int = 2_048) -> ScaleNet:
    """A seeded :class:`ScaleNet`, calibrated on ``calibration`` images that no run holds (drawn from
    :data:`CALIBRATION`): the convolution's biases
    so that :data:`ZERO_SHARE` of ψ is zero; the head a nearest-mean classifier of the ten prototypes on
    the standardised pooled ψ, its biases then evened out so that every class is about as often predicted."""
    torch.manual_seed(seed)
    net = ScaleNet().eval()
    images, which = synthetic_images(CALIBRATION, CALIBRATION + calibration, seed, prototypes=True)
    x = _normalised(images)
    with torch.no_grad():
        pre = net.conv(x).transpose(0, 1).reshape(SCALE_PSI[0], -1)
        net.conv.bias -= torch.quantile(pre[:, ::5], ZERO_SHARE, dim=1)
        pooled = torch.flatten(net.pool(net.relu(net.conv(x))), 1)
        mu, sd = pooled.mean(0), pooled.std(0).clamp_min(1e-6)
        z = (pooled - mu) / sd
        means = torch.stack([z[torch.from_numpy(which == c)].mean(0) for c in range(N_CLASSES)])
        w = means / sd
        b = -(w @ mu) - 0.5 * (means ** 2).sum(1)
        logits = pooled @ w.T + b
        for _ in range(50):  # even out the classes' shares of the predictions
            share = torch.bincount(logits.argmax(1), minlength=N_CLASSES).float() / len(logits)
            step = 0.2 * logits.std() * torch.log((share + 1e-3) * N_CLASSES)
            b, logits = b - step, logits - step
        net.fc.weight.copy_(w)
        net.fc.bias.copy_(b)
    return net


def psi_and_predictions(net: ScaleNet, images: np.ndarray, batch: int = 256, keep_psi: bool = True
                        ) -> tuple[np.ndarray | None, np.ndarray]:
    """ψ (float32 ``[n, 512, 7, 7]``; ``None`` unless ``keep_psi``) and the predicted classes of uint8
    ``images``, normalised as in the runs."""
    psi, preds = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            f = net.relu(net.conv(_normalised(images[i: i + batch])))
            if keep_psi:
                psi.append(f.numpy())
            preds.append(net.fc(torch.flatten(net.pool(f), 1)).argmax(1).numpy())
    return (np.concatenate(psi) if keep_psi else None), np.concatenate(preds)


def write_split(path: Path, net: ScaleNet, lo: int, hi: int, seed: int) -> dict[str, Any]:
    """Images ``lo .. hi - 1`` and the model's predictions as their labels, as an ``.npz`` of ``data.kind: arrays``."""
    images = synthetic_images(lo, hi, seed)
    y = psi_and_predictions(net, images, keep_psi=False)[1].astype(np.int64)
    np.savez(path, images=images, labels=y)
    return {"path": str(path), "n": hi - lo, "class_shares": np.round(np.bincount(y, minlength=N_CLASSES) / len(y),
                                                                        3).tolist()}


def write_inputs(folder: Path, n: int, n_unseen: int, seed: int = 0) -> dict[str, Any]:
    """``folder/model.pt`` (a plain state dict of :func:`scale_model`), ``reference.npz`` (images 0 .. n - 1)
    and ``unseen.npz`` (the next ``n_unseen``)."""
    folder.mkdir(parents=True, exist_ok=True)
    net = scale_model(seed)
    torch.save(net.state_dict(), folder / "model.pt")
    ref = write_split(folder / "reference.npz", net, 0, n, seed)
    uns = write_split(folder / "unseen.npz", net, n, n + n_unseen, seed)
    return {"checkpoint": str(folder / "model.pt"), "reference": ref, "unseen": uns}


def run_config(inputs: dict[str, Any], *, methods: tuple[str, ...] = ("RI", "Grad-CAM"), per_class: int = 10,
               q: int = 50, chunk_size: int = 512, kmeans: str | None = None, metrics: list[str] | None = None,
               case_studies: int = 1, device: str = "cpu", n_workers: int = 2, task_runner: str = "dask"
               ) -> dict[str, Any]:
    """The YAML of the run on :func:`write_inputs`' files; ``kmeans`` is ``interpretation.kmeans`` (left to
    the config's default when ``None``)."""
    interpretation: dict[str, Any] = {"q": q, "interpretations_per_class": per_class, "seed": 0}
    if kmeans is not None:
        interpretation["kmeans"] = kmeans
    evaluation: dict[str, Any] = {"methods": list(methods), "case_studies": case_studies}
    if metrics is not None:
        evaluation["metrics"] = metrics
    return {"name": "scale",
            "data": {"kind": "arrays", "reference": inputs["reference"]["path"], "unseen": inputs["unseen"]["path"],
                     "image_size": IMAGE_SIZE, "mean": [MEAN] * 3, "std": [STD] * 3},
            "model": {"architecture": ARCHITECTURE, "checkpoint": inputs["checkpoint"], "layer": LAYER,
                      "num_classes": N_CLASSES},
            "interpretation": interpretation, "evaluation": evaluation,
            "runtime": {"device": device, "chunk_size": chunk_size, "batch_size": chunk_size,
                        "task_runner": task_runner, "n_workers": n_workers}}


# ------------------------------------------------------------------------------------------ the process tree
def _kib(pid: int) -> tuple[int, int, int]:
    """``(VmRSS, VmHWM, Pss)`` of ``pid`` in KiB (psutil's RSS thrice where there is no ``/proc``); zeros once gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
        rss, hwm = (re.search(rf"^{k}:\s+(\d+)", text, re.M) for k in ("VmRSS", "VmHWM"))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                pss = re.search(r"^Pss:\s+(\d+)", f.read(), re.M)
        except OSError:
            pss = rss
        return tuple(int(m.group(1)) if m else 0 for m in (rss, hwm, pss))  # type: ignore[return-value]
    except OSError:
        import psutil

        try:
            kib = psutil.Process(pid).memory_info().rss // 1024
            return kib, kib, kib
        except psutil.Error:
            return 0, 0, 0


class TreeSampler:
    """Every ``every`` seconds, the summed RSS of ``pid`` and all its descendants (``samples``: seconds since
    the start, RSS KiB, PSS KiB, processes) and each process's own high-water mark (``hwm_kib``: pid -> name,
    KiB). The RSS sum counts the pages the processes share (torch's libraries) once per process; the PSS
    sum (proportional set size) counts each page once."""

    def __init__(self, pid: int, every: float = SAMPLE_EVERY) -> None:
        self.pid, self.every, self.t0 = pid, every, time.monotonic()
        self.samples: list[tuple[float, int, int, int]] = []
        self.hwm_kib: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        total = shared = 0
        for p in procs:
            rss, hwm, pss = _kib(p.pid)
            total, shared = total + rss, shared + pss
            if hwm > self.hwm_kib.get(p.pid, ("", 0))[1]:
                try:
                    name = " ".join(p.cmdline()[:3])[-80:]
                except psutil.Error:
                    name = "?"
                self.hwm_kib[p.pid] = (name, hwm)
        if total:
            self.samples.append((time.monotonic() - self.t0, total, shared, len(procs)))

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.every):
                return


# ------------------------------------------------------------------------------------------ one run
# what the run's stderr says as each stage starts or ends: `[repint] <stage>: 0/<n>` progress lines and the
# pipeline's own `<flow> done in <s> s` (INFO) lines
_STARTED = re.compile(r"\[repint\] ([\w.+\[\]=-]+): 0/\d+ ")
_DONE = re.compile(r"\b(ingest|centres|boundaries|interpret|evaluate) done in ([\d.]+) s")


def phases(events: list[tuple[float, str]], end: float) -> list[tuple[str, float, float]]:
    """``(stage, start, end)`` (seconds since the run's start) from its stderr ``events``: start-up, ingest,
    centres, Q (sampling the boundaries), signs, solves, assignment (of the unseen images),
    interpretations and evaluation, report. A stage the log does not show is left out."""
    marks: list[tuple[float, str]] = [(0.0, "start-up (Prefect server, model, preflight)")]
    after = {"centres": "Q (Dask cluster start-up, sampling the boundaries)", "interpret": "assignment (unseen images)",
             "evaluate": "report (summary, figures, report.html)"}
    for t, line in events:
        started, done = _STARTED.search(line), _DONE.search(line)
        name = started.group(1) if started else None
        if name == "ingest-reference":
            marks.append((t, "ingest"))
        elif name == "signs-reference":
            marks.append((t, "signs"))
        elif name == "solve":
            marks.append((t, "solves"))
        elif name and name.startswith("interpret-") and marks[-1][1] != "interpretations and evaluation":
            marks.append((t, "interpretations and evaluation"))
        elif done and done.group(1) == "ingest":
            marks.append((t, "centres (k-means)"))
        elif done and done.group(1) in after:
            marks.append((t, after[done.group(1)]))
    out = []
    for (t, name), nxt in zip(marks, [*marks[1:], (end, "")], strict=True):
        if nxt[0] > t or name.startswith("report"):
            out.append((name, t, nxt[0]))
    return out


def run_pipeline(config: dict[str, Any], out: Path, env: dict[str, str] | None = None,
                 timeout: float = 24 * 3600) -> dict[str, Any]:
    """``repint run`` of ``config`` into ``out`` as a subprocess, its process tree sampled every
    :data:`SAMPLE_EVERY` s: total seconds, the tree's peak RSS, per stage its seconds and peak, the
    run's ``summary.json`` timings. Its stderr is kept in ``out/../<out>.log``."""
    import yaml

    out.parent.mkdir(parents=True, exist_ok=True)
    cfg_path, log_path = out.parent / f"{out.name}.yaml", out.parent / f"{out.name}.log"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    child_env = {**os.environ, **CHILD_ENV, "REPINT_PROGRESS": "lines", "PREFECT_LOGGING_LEVEL": "INFO",
                 **(env or {})}
    events: list[tuple[float, str]] = []
    cmd = [sys.executable, "-m", "repint.app.cli", "run", str(cfg_path), "--out", str(out)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=child_env)
        with TreeSampler(proc.pid) as tree:
            def read() -> None:
                for line in proc.stderr:  # type: ignore[union-attr]
                    events.append((time.monotonic() - tree.t0, line.rstrip()))
                    log.write(line)

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
            reader.join(10)
            end = time.monotonic() - tree.t0
    if rc:
        tail = "\n".join(line for _, line in events[-40:])
        raise RuntimeError(f"repint run failed ({rc}); log {log_path}:\n{tail[-4000:]}")
    summary = json.loads((out / "summary.json").read_text())
    stages = []
    for name, lo, hi in phases(events, end):
        inside = [(rss, pss) for t, rss, pss, _ in tree.samples if lo <= t <= hi]
        stages.append({"stage": name, "seconds": round(hi - lo, 2),
                       "peak_rss_mib": round(max(r for r, _ in inside) / 1024, 1) if inside else None,
                       "peak_pss_mib": round(max(p for _, p in inside) / 1024, 1) if inside else None})
    top = sorted(tree.hwm_kib.values(), key=lambda v: -v[1])[:6]
    flows = {m.group(1): float(m.group(2)) for _, line in events if (m := _DONE.search(line))}
    return {"n_reference": summary["n_reference"], "n_unseen": summary["n_unseen"],
            "n_interpretations": summary["n_interpretations"], "seconds": round(end, 2),
            "peak_rss_mib": round(max((s[1] for s in tree.samples), default=0) / 1024, 1),
            "peak_pss_mib": round(max((s[2] for s in tree.samples), default=0) / 1024, 1),
            "stages": stages, "flow_seconds": flows, "timings_s": summary.get("timings_s", {}),
            "max_processes": max((s[3] for s in tree.samples), default=0), "samples": len(tree.samples),
            "process_hwm_mib": [{"process": name, "hwm_mib": round(kib / 1024, 1)} for name, kib in top],
            "kmeans": summary.get("kmeans") or summary.get("centres"), "log": str(log_path),
            "command": " ".join(cmd)}


def markdown(run: dict[str, Any]) -> str:
    """A run's stages as a markdown table: stage, seconds, peak RSS of the process tree."""
    lines = ["| stage | seconds | peak RSS (MiB, process tree) | peak PSS (MiB) |", "|---|---:|---:|---:|"]
    for s in run["stages"]:
        rss, pss = ("-" if s[k] is None else f"{s[k]:,.0f}" for k in ("peak_rss_mib", "peak_pss_mib"))
        lines.append(f"| {s['stage']} | {s['seconds']:,.1f} | {rss} | {pss} |")
    lines.append(f"| **whole run** | **{run['seconds']:,.1f}** | **{run['peak_rss_mib']:,.0f}** | "
                 f"**{run['peak_pss_mib']:,.0f}** |")
    return "\n".join(lines)


def bench_pipeline_memory(n: int, factor: int = 10, max_ratio: float = 1.2, n_unseen: int = 500,
                          per_class: int = 2, kmeans: str | None = "minibatch", work: Path | None = None
                          ) -> Result:
    """Ratio of the peak RSS of ``repint run``'s whole process tree at ``factor * n`` reference images to that
    at ``n`` (same unseen set, one run after the other). ``kmeans`` is ``interpretation.kmeans`` in both
    (chunked at both sizes by default, so that the line measures growth rather than the switch ``auto``
    makes at its byte limit)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="repint-bench-pipeline-", dir=work) as tmp:
        runs = []
        for size in (n, factor * n):
            inputs = write_inputs(Path(tmp, f"data-{size}"), size, n_unseen)
            cfg = run_config(inputs, per_class=per_class, kmeans=kmeans, metrics=["ad-ai"])
            runs.append(run_pipeline(cfg, Path(tmp, f"run-{size}")))
            runs[-1]["class_shares"] = inputs["reference"]["class_shares"]
    small, big = runs[0]["peak_rss_mib"], runs[1]["peak_rss_mib"]
    ratio = big / max(small, 1e-9)
    # the tree's peak is mostly imports (torch in the run and each worker): the run's own process too, so
    # that growth in the process that orchestrates every stage cannot hide under that floor
    own = [run_process_hwm_mib(r) for r in runs]
    own_ratio = own[1] / max(own[0], 1e-9)
    return result(f"whole pipeline memory: peak RSS of `repint run` (process tree) at {factor * n:,} vs {n:,} "
                  f"images, ψ {'x'.join(map(str, SCALE_PSI))}", ratio,
                  f"<= {max_ratio:g}x (within {100 * (max_ratio - 1):.0f}%), the run's own process too",
                  ratio <= max_ratio and own_ratio <= max_ratio,
                  f"{big:,.0f} MiB (run's process {own[1]:,.0f})", f"{small:,.0f} MiB (run's process {own[0]:,.0f})",
                  run_process_ratio=own_ratio, kmeans=kmeans or "config default", n_unseen=n_unseen,
                  interpretations_per_class=per_class, runs=runs)


def run_process_hwm_mib(run: dict[str, Any]) -> float:
    """The high-water mark of the ``repint run`` process itself in a :func:`run_pipeline` record."""
    return max((p["hwm_mib"] for p in run["process_hwm_mib"] if "repint.app.cli" in p["process"]), default=0.0)
