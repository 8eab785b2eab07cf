"""What every task needs: the store, the split model, the data sources, chunking (the run spec is
:mod:`repint.tasks.runspec`)."""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np
import torch

from repint.data import ImageSource, source_from_spec
from repint.model import SplitModel
from repint.nets import build_split, resolve_device
from repint.ranking import distinct_polytopes
from repint.storage import FeatureStore
from repint.storage.layout import POLYTOPES, StageKind
from repint.tasks.runspec import RunSpec
from repint.variants import Variant

__all__ = ["build_split", "chunks", "load_split", "logger", "n_distinct_polytopes", "open_store", "source", "unit_key"]


def logger() -> logging.Logger:
    try:
        from prefect import get_run_logger

        return get_run_logger()  # type: ignore[return-value]
    except Exception:
        return logging.getLogger("repint")


def n_distinct_polytopes(store: FeatureStore) -> int:
    """How many distinct covered sets the store's polytopes have, reading ``polytopes/covered`` one
    interpretation at a time (:func:`repint.ranking.distinct_polytopes`)."""
    covered = POLYTOPES.of()["covered"]
    return len(np.unique(distinct_polytopes(store.read(covered, v) for v in range(store.shape(covered)[0]))))


def open_store(spec: RunSpec, mode: str = "a") -> FeatureStore:
    return FeatureStore(spec.store, spec.storage_options, mode=mode)


def source(spec: RunSpec, split: str) -> ImageSource:
    return source_from_spec(spec.reference if split == "reference" else spec.unseen)


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + size, n)) for lo in range(0, n, size)]


@functools.lru_cache(maxsize=4)
def _load(model_json: str) -> SplitModel:
    import json

    return build_split(json.loads(model_json))[0]


def load_split(spec: RunSpec) -> SplitModel:
    """The model split at ψ, loaded once per process (under the trace lock: threads that ask at
    once wait for the one trace instead of tracing while another runs the model)."""
    import json

    from repint.model import TRACE_LOCK

    with TRACE_LOCK:
        return _load(json.dumps(spec.model, sort_keys=True))


def device(spec: RunSpec) -> torch.device:
    return resolve_device(spec.runtime.device)


def unit_key(kind: StageKind, key: str | None = None) -> Any:
    """A Prefect ``cache_key_fn`` for the units of one kind of stage (the stage named by the task's
    parameter ``key``: ``split``, or ``method`` whose store key is used): the store's identity, the
    stage's input fingerprint and epoch, and the unit.

    A store that is deleted and recreated gets a new ``store_id``, changed inputs give a new stage
    fingerprint, and a stage that is reset for any reason gets a new epoch, so no cache entry is
    trusted for a unit whose data is not in the store."""

    def cache_key(context: Any, parameters: dict[str, Any]) -> str | None:
        spec = parameters["spec"]
        spec = spec if isinstance(spec, RunSpec) else RunSpec.model_validate(spec)
        try:
            attrs = open_store(spec, mode="r").attrs
        except Exception:
            return None
        value = parameters[key] if key else None
        stage_name = kind.of(value.key if isinstance(value, Variant) else value).name
        info = attrs.get("stages", {}).get(stage_name)
        if not info:
            return None
        unit = [f"{k}={v}" for k, v in sorted(parameters.items()) if k != "spec"]
        return "-".join([context.task.name, attrs["store_id"], stage_name, info["fingerprint"],
                         str(info.get("epoch")), *unit])

    return cache_key


def batched_forward(module: torch.nn.Module, x: np.ndarray, batch_size: int, dev: torch.device) -> np.ndarray:
    """``module(x)`` in batches without gradients, as float32 numpy."""
    outs = []
    module.to(dev)
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            outs.append(module(torch.as_tensor(x[i: i + batch_size], device=dev)).float().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_M_MMAP_THRESHOLD = -3


@functools.lru_cache(maxsize=1)
def bound_chunk_memory() -> None:
    """Serve large buffers (> 128 KiB: images, features, activations of a chunk) with their own
    mappings that go back to the OS when freed (glibc ``mallopt(M_MMAP_THRESHOLD)``; fixing it also
    stops glibc from raising the threshold as it sees such buffers freed, which lets the heap grow
    with the number of chunks). Measured by ``benchmarks/run.py``: peak RSS at 4N vs N images."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)


def release_memory() -> None:
    """Hand memory freed by a chunk back to the OS (glibc ``malloc_trim``, as Dask's ``trim_memory``
    does), so that a long ingest's resident size stays bounded by one chunk's working set."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
