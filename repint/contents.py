"""Content fingerprints of an image source, per chunk of the store, cheap to check again.

A source's :meth:`~repint.data.ImageSource.fingerprint` covers its spec, ids and labels: an image
replaced under the same name keeps it. The ingest stage therefore also hashes what it reads, and
records per chunk of ``chunk`` images

* ``stats``: for an image folder, the hash of each file's name, size and modification time
  (``os.stat``), the cheap first check; ``""`` for in-memory sources (digits, ``.npz``);
* ``hashes``: the SHA-256 of the chunk's file bytes (an image folder) or of its pixels (in memory).

Checking again (:func:`content_record` with the previous record) re-reads only the chunks whose
stats changed: a file touched but not changed keeps its chunk's hash, a file changed under the same
name, size and time is not noticed (``make``'s rule; ``repint reinterpret`` hashes every byte).
:func:`changed_chunks` is what ``repint verify`` reports.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from repint.data import ImageSource

__all__ = ["changed_chunks", "chunk_files", "content_record", "file_sha256"]


def file_sha256(path: str | Path) -> str:
    """The first 16 hex digits of a file's SHA-256: how stores record their checkpoint (``checkpoint_sha256``)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def _files(src: ImageSource) -> list[Path] | None:
    files = getattr(src, "files", None)
    return list(files()) if callable(files) else None


def _ranges(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]


def _stats(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _hash_files(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()[:16]


def _hash_pixels(src: ImageSource, lo: int, hi: int) -> str:
    return hashlib.sha256(np.ascontiguousarray(src.load(np.arange(lo, hi))).tobytes()).hexdigest()[:16]


def chunk_files(src: ImageSource, chunk: int, index: int) -> list[str]:
    """The ids of chunk ``index``'s images."""
    lo, hi = _ranges(len(src), chunk)[index]
    return src.ids[lo:hi]


def content_record(src: ImageSource, chunk: int, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"chunk", "stats", "hashes", "fingerprint"}`` of ``src`` in chunks of ``chunk`` images; the
    hashes of ``previous`` (a record of the same source and chunking) are kept for chunks whose stats
    are unchanged. ``fingerprint`` hashes the chunks' hashes: the ingest stage's content input."""
    files = _files(src)
    ranges = _ranges(len(src), chunk)
    same = bool(previous) and previous.get("chunk") == chunk and len(previous.get("hashes", ())) == len(ranges)
    stats, hashes = [], []
    for i, (lo, hi) in enumerate(ranges):
        if files is None:
            stats.append("")
            hashes.append(_hash_pixels(src, lo, hi))
            continue
        s = _stats(files[lo:hi])
        stats.append(s)
        reuse = same and previous["stats"][i] == s  # type: ignore[index]
        hashes.append(previous["hashes"][i] if reuse else _hash_files(files[lo:hi]))  # type: ignore[index]
    fp = hashlib.sha256("".join(hashes).encode()).hexdigest()[:16]
    return {"chunk": chunk, "stats": stats, "hashes": hashes, "fingerprint": fp}


def changed_chunks(src: ImageSource, record: dict[str, Any]) -> list[int]:
    """The chunks of ``src`` whose content differs from ``record`` (stats first, then the bytes of the
    chunks whose stats changed); every chunk when the number of chunks differs."""
    now = content_record(src, int(record["chunk"]), record)
    if len(now["hashes"]) != len(record.get("hashes", ())):
        return list(range(len(now["hashes"])))
    return [i for i, (a, b) in enumerate(zip(now["hashes"], record["hashes"], strict=True)) if a != b]
