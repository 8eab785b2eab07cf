"""Train the project's default architecture (for the embedded demo and benchmarks), cached by
fingerprint of data, architecture, training parameters and code."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import task

from repint.config import TrainConfig
from repint.contents import content_record
from repint.data import source_from_spec
from repint.model import Classifier
from repint.nets import build_model, train_classifier
from repint.progress import emit, progress_mode
from repint.storage import fingerprint_params
from repint.tasks.common import batched_forward, logger

TRAIN_CODE_VERSION = 3


def cache_dir() -> Path:
    return Path(os.environ.get("REPINT_CACHE", Path.home() / ".cache" / "repint"))


def accuracy(model: Classifier, images: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> float:
    out = batched_forward(model, images, batch_size, torch.device("cpu"))
    return float((out.argmax(1) == labels).mean()) if len(labels) else float("nan")


@task(name="train-model", task_run_name="train-{architecture}")
def train_model(reference: dict[str, Any], unseen: dict[str, Any] | None, architecture: str, image_size: int,
                mean: tuple[float, ...], std: tuple[float, ...], train: TrainConfig,
                checkpoint: str | None = None, device: str = "auto") -> dict[str, Any]:
    """Train on the reference set (its labels) and save a state dict. Without ``checkpoint`` the
    result is cached under ``$REPINT_CACHE/models/<fingerprint>.pt`` and reused."""
    src = source_from_spec(reference)
    n_classes = len(src.class_names)
    # the images' contents too (files replaced under the same names train another model); the embedded
    # digits are their spec, and keep the key they always had
    content = () if reference.get("kind") == "digits" or checkpoint else (content_record(src, 256)["fingerprint"],)
    fp = fingerprint_params("train", TRAIN_CODE_VERSION, src.fingerprint(), architecture, image_size, mean, std,
                            train.model_dump(), *content)
    path = Path(checkpoint) if checkpoint else cache_dir() / "models" / f"{architecture}-{fp}.pt"
    meta_path = path.with_suffix(".json")
    if not checkpoint and path.exists() and meta_path.exists():
        if progress_mode() != "off":
            emit(f"train: {architecture} cached in {path}")
        return json.loads(meta_path.read_text())
    log = logger()
    torch.manual_seed(train.seed)
    net = build_model(architecture, n_classes, image_size, in_channels=len(mean))
    model = Classifier(net, tuple(mean), tuple(std))
    images = src.load(np.arange(len(src)))
    show = progress_mode() != "off"  # a line per epoch on stderr, in a terminal and in a log alike
    if show:
        emit(f"train: {architecture} on {len(images)} images, {train.epochs} epochs")
    start = time.perf_counter()

    def progress(epoch: int, acc: float) -> None:
        log.info(f"epoch {epoch}/{train.epochs}: train accuracy {acc:.3f}")
        if show:
            emit(f"train: epoch {epoch}/{train.epochs}, train accuracy {acc:.3f}, "
                 f"{time.perf_counter() - start:.0f} s")

    res = train_classifier(model, images, src.labels, epochs=train.epochs, batch_size=train.batch_size, lr=train.lr,
                           seed=train.seed, device=device, augment=train.augment, progress=progress)
    meta: dict[str, Any] = {"checkpoint": str(path), "architecture": architecture, "fingerprint": fp,
                            "n_classes": n_classes, "class_names": src.class_names,
                            "train_accuracy": res.train_accuracy, "train_seconds": time.perf_counter() - start,
                            "epochs": res.epochs, "layer": getattr(net, "psi_layer", None)}
    if unseen is not None:
        u = source_from_spec(unseen)
        meta["test_accuracy"] = accuracy(model, u.load(np.arange(len(u))), u.labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(net.state_dict(), tmp)
    os.replace(tmp, path)
    meta_path.write_text(json.dumps(meta, indent=2))
    log.info(f"trained {architecture}: train accuracy {res.train_accuracy:.3f}, "
             f"test accuracy {meta.get('test_accuracy', float('nan')):.3f}, {meta['train_seconds']:.1f} s -> {path}")
    return meta
