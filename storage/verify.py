"""``repint verify STORE``: check a feature store's integrity and say exactly what is wrong.

Checks, for every stage the store records as complete, against the layout declared in
:mod:`repint.storage.layout` (this module declares no stage and no array of its own):

* layout: the stage's arrays exist (an interpretation: its group, with a group ``c<v>`` per centre);
* shapes and dtype kinds are the declared ones, each symbolic dimension bound by the first array
  that has it and checked against the others (N images per split, K/h/w, D = K*h*w, C classes,
  M boundaries, B = ceil(M/8), V centres, Q);
* completion records: every unit of ``_done/<stage>`` is true, and there are as many as the
  layout's units (chunks of images, centres, or one);
* chunks: every chunk object of the stage's arrays is present and decodes (a missing one is named
  with its array path and chunk index; in stores written before every chunk was written, a missing
  chunk may be one of fill values and is a warning);
* fingerprints: every stage has a fingerprint and an epoch; the model and data fingerprints are
  recorded;
* data: the images each split was ingested from still have the recorded ids, labels and content
  hashes (:mod:`repint.storage.verify_data`; a warning where they cannot be reached from here);
* sign bits: on a sample of rows, ``signs/<split>`` equals ``<W, ψ(x)> + b > 0`` recomputed from
  the stored features, ``W`` and ``b``; ``predictions`` equals the argmax of ``logits``.

Stages that were started and are not complete are reported (with the run holding the store's lock,
if any) but are not errors: that is a run in progress or one to resume.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from repint.storage.errors import retrying
from repint.storage.layout import (
    BOUNDARIES,
    INGEST,
    SIGNS,
    SPLITS,
    STAGES,
    ArraySpec,
    Stage,
    derived_sizes,
    parse_stage,
)
from repint.storage.lock import StoreLock
from repint.storage.store import FeatureStore

__all__ = ["Finding", "VerifyReport", "stage_arrays", "verify_store"]


@dataclass
class Finding:
    level: str  # "error" or "warning"
    message: str
    path: str | None = None
    chunk: tuple[int, ...] | None = None

    def __str__(self) -> str:
        where = self.path or ""
        if self.chunk is not None:
            where += f" chunk {'.'.join(map(str, self.chunk))}"
        return f"{self.level.upper():7} {where + ': ' if where else ''}{self.message}"


@dataclass
class VerifyReport:
    url: str
    stages: dict[str, str] = field(default_factory=dict)  # stage -> "complete" / "incomplete (k/n units done)"
    findings: list[Finding] = field(default_factory=list)
    chunks_checked: int = 0
    rows_recomputed: int = 0
    writer: dict[str, Any] | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, message: str, path: str | None = None, chunk: tuple[int, ...] | None = None) -> None:
        self.findings.append(Finding("error", message, path, chunk))

    def warning(self, message: str, path: str | None = None, chunk: tuple[int, ...] | None = None) -> None:
        self.findings.append(Finding("warning", message, path, chunk))

    def text(self) -> str:
        lines = [f"repint verify {self.url}"]
        if self.writer:
            lines.append(f"  being written now by {StoreLock.describe(self.writer)}: only complete stages are checked")
        for stage, status in self.stages.items():
            lines.append(f"  stage {stage:<28} {status}")
        lines.append(f"  {self.chunks_checked} chunks read and decoded, sign bits of {self.rows_recomputed} rows "
                     "recomputed")
        lines += [f"  {f}" for f in self.findings]
        n_err, n_warn = len(self.errors), len(self.findings) - len(self.errors)
        lines.append(f"{'OK' if self.ok else 'PROBLEMS'}: {n_err} error(s), {n_warn} warning(s)")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "ok": self.ok, "stages": self.stages, "chunks_checked": self.chunks_checked,
                "rows_recomputed": self.rows_recomputed, "writer": self.writer,
                "findings": [{"level": f.level, "path": f.path, "chunk": list(f.chunk) if f.chunk else None,
                              "message": f.message} for f in self.findings]}


def stage_arrays(stage: str, root: zarr.Group) -> list[str]:
    """The arrays a complete ``stage`` must have, as the layout declares them (``interpret-<m>``:
    every array under its group, or the group itself when there is none)."""
    st = parse_stage(stage)
    if st is None:
        return []
    if not st.kind.dynamic:
        return [path for path, _ in st.arrays]
    if st.group not in root:
        return [st.group]
    return [f"{st.group}/{p}" for p, node in root[st.group].members(max_depth=None) if isinstance(node, zarr.Array)]


def _chunk_grid(arr: zarr.Array) -> Iterator[tuple[tuple[int, ...], tuple[slice, ...]]]:
    """Every chunk's index and its region."""
    counts = [math.ceil(s / c) if s else 0 for s, c in zip(arr.shape, arr.chunks, strict=True)]
    for idx in itertools.product(*(range(n) for n in counts)):
        yield idx, tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, arr.chunks, arr.shape, strict=True))


def _stored_keys(root: zarr.Group, prefix: str) -> set[str]:
    from zarr.core.sync import sync

    async def collect() -> set[str]:
        return {k async for k in root.store.list_prefix(prefix)}

    return sync(collect())


#: what the units of each kind of stage are, for messages
_UNITS = {"chunks": "the stage's arrays have {} chunks", "V": "the store has {} centres", "1": "the stage has {} unit"}


class _Checker:
    def __init__(self, store: FeatureStore, report: VerifyReport, sample: int, seed: int) -> None:
        self.store, self.root, self.report = store, store.root, report
        self.sample, self.rng = sample, np.random.default_rng(seed)
        self.strict_chunks = bool(self.root.attrs.get("chunks_always_written"))
        self.bad_chunks: dict[str, set[int]] = {}  # array -> first-axis index of missing / undecodable chunks
        self.dims: dict[str, int] = {}  # the layout's dimensions, bound by the first array that has them; N/<split>

    def array(self, path: str) -> zarr.Array | None:
        try:
            node = self.root[path]
        except (KeyError, FileNotFoundError):
            return None
        return node if isinstance(node, zarr.Array) else None

    def sizes(self, stage: Stage) -> dict[str, int]:
        """The dimensions bound so far, as ``stage`` sees them (``N``: its split's images)."""
        out = {k: v for k, v in self.dims.items() if "/" not in k}
        if f"N/{stage.split}" in self.dims:
            out["N"] = self.dims[f"N/{stage.split}"]
        out.update({d: self.dims[k] for d in stage.kind.local_dims if (k := f"{d}/{stage.name}") in self.dims})
        return out

    @staticmethod
    def _dim_key(stage: Stage, dim: str) -> str:
        """Where a bound dimension is kept: ``N`` per split, a stage's local ones per stage."""
        if dim == "N":
            return f"N/{stage.split}"
        return f"{dim}/{stage.name}" if dim in stage.kind.local_dims else dim

    def expect(self, stage: Stage, path: str, spec: ArraySpec) -> zarr.Array | None:
        """``path`` exists with the declared shape (each dimension as bound by the arrays before it;
        one not bound yet is bound here) and a dtype of the declared kind."""
        arr = self.array(path)
        if arr is None and spec.later:
            self.report.warning("absent: the stage was completed before this array existed (a run evaluates it "
                                "again)", path)
            return None
        if arr is None:
            self.report.error("missing (its stage is complete)", path)
            return None
        known = derived_sizes(self.sizes(stage))
        want = [d if isinstance(d, int) else known.get(d) for d in spec.shape]
        if len(arr.shape) == len(want):
            for d, s in zip(spec.shape, arr.shape, strict=True):
                if isinstance(d, str) and d not in known:
                    self.dims[self._dim_key(stage, d)] = known[d] = int(s)
        if len(arr.shape) != len(want) or any(e is not None and e != s for e, s in zip(want, arr.shape, strict=True)):
            shown = "[" + ", ".join("*" if e is None else str(e) for e in want) + "]"
            self.report.error(f"shape {list(arr.shape)} does not match the other arrays (expected {shown})", path)
        dtype = arr.dtype if isinstance(arr.dtype, np.dtype) else np.dtype(object)
        kind = "UOT" if spec.kind == "U" else spec.kind
        if dtype.kind not in kind and not (kind == "UOT" and "string" in str(arr.dtype).lower()):
            self.report.error(f"dtype {arr.dtype} is not the layout's ({kind})", path)
        return arr

    def n_units(self, stage: Stage) -> int | None:
        """How many units the stage's records must have: the layout's count for the sizes stored
        (chunks: of its first array chunked by images), or None when they cannot be told."""
        sizes = self.sizes(stage)
        if stage.kind.units == "chunks":
            arr = next((a for p, spec in stage.arrays if spec.chunks and spec.chunks[0] == "chunk"
                        and (a := self.array(p)) is not None), None)
            if arr is None:
                return None
            sizes.update(N=arr.shape[0], chunk=arr.chunks[0])
        elif stage.kind.units == "V" and "V" not in sizes:
            return None
        return stage.n_units(sizes)

    # chunks -------------------------------------------------------------------------------------
    def chunks(self, path: str) -> None:
        arr = self.array(path)
        if arr is None:
            return
        base = arr.store_path.path.strip("/")
        keys = retrying(f"listing the chunks of {path}", lambda: _stored_keys(self.root, f"{base}/"),
                        self.store.retry)
        encode = arr.metadata.chunk_key_encoding.encode_chunk_key  # type: ignore[union-attr]
        for idx, region in _chunk_grid(arr):
            if f"{base}/{encode(idx)}" not in keys:
                self.bad_chunks.setdefault(path, set()).add(idx[0] if idx else 0)
                if self.strict_chunks:
                    self.report.error("chunk object is missing (reads as fill values)", path, idx)
                else:
                    self.report.warning("chunk object is missing: fill values, or lost (this store was written "
                                        "before every chunk was written)", path, idx)
                continue
            try:
                retrying(f"reading {path} chunk {idx}", lambda region=region: np.asarray(arr[region]),
                         self.store.retry)
                self.report.chunks_checked += 1
            except Exception as exc:
                self.bad_chunks.setdefault(path, set()).add(idx[0] if idx else 0)
                self.report.error(f"chunk does not decode ({type(exc).__name__}: {exc})", path, idx)

    def done(self, stage: Stage) -> None:
        path = f"_done/{stage.name}"
        arr = self.array(path)
        if arr is None:
            self.report.error("completion records are missing (its stage is complete)", path)
            return
        self.chunks(path)
        n_units = self.n_units(stage)
        if n_units is not None and arr.shape != (n_units,):
            self.report.error(f"{arr.shape[0]} units recorded, {_UNITS[stage.kind.units].format(n_units)}", path)
        try:
            done = np.asarray(arr[:])
        except Exception:
            return
        missing = np.flatnonzero(~done)
        if len(missing):
            self.report.error(f"stage {stage.name!r} is marked complete but units {missing[:10].tolist()} have no "
                              "completion record", path)

    # the checks ---------------------------------------------------------------------------------
    def run(self, complete: set[str]) -> None:
        """Every check of every complete stage, in the pipeline's order (dimensions bound upstream
        are checked downstream), then every chunk, then the recomputed sample."""
        attrs = self.root.attrs
        r = self.report
        for key in ("layout_version", "store_id"):
            if key not in attrs:
                r.error(f"the root attribute {key!r} is missing")
        for stage, info in attrs.get("stages", {}).items():
            if not re.fullmatch(r"[0-9a-f]{16}", str(info.get("fingerprint", ""))):
                r.error(f"stage {stage!r} has no input fingerprint recorded")
            if not info.get("epoch"):
                r.error(f"stage {stage!r} has no epoch recorded")
        kinds = list(STAGES.values())
        stages = sorted((st for name in complete if (st := parse_stage(name)) is not None),
                        key=lambda st: (kinds.index(st.kind), SPLITS.index(st.split), st.name))
        for st in stages:
            if st.kind is INGEST:
                if not attrs.get(f"data_fingerprint_{st.split}"):
                    r.error(f"the data fingerprint of the {st.split} set (data_fingerprint_{st.split}) is not recorded")
                if not (attrs.get("model") or {}).get("architecture"):
                    r.error("the model (architecture, checkpoint and its SHA-256) is not recorded")
            if st.kind.dynamic:
                self.interpretations(st)
            for path, spec in st.arrays:
                self.expect(st, path, spec)
            self.done(st)
        for st in stages:
            for path in stage_arrays(st.name, self.root):
                if self.array(path) is not None:
                    self.chunks(path)
        self.recompute(complete)

    def interpretations(self, stage: Stage) -> None:
        """A method's interpretations: arrays of its own under its group, a group ``c<v>`` per centre."""
        paths = stage_arrays(stage.name, self.root)
        if not paths or (len(paths) == 1 and paths[0] not in self.root):
            self.report.error("missing (its stage is complete)", stage.group)
        elif (v := self.sizes(stage).get("V")) is not None:
            have = {name for name, _ in self.root[stage.group].groups()}
            lacking = [c for c in range(v) if f"c{c}" not in have]
            if lacking:
                self.report.error(f"no interpretation of centres {lacking[:10]}", stage.group)

    def readable(self, rows: np.ndarray, *paths: str) -> np.ndarray:
        """``rows`` without those in a chunk of ``paths`` that is missing or does not decode (reported)."""
        keep = np.ones(len(rows), dtype=bool)
        for path in paths:
            bad = self.bad_chunks.get(path)
            arr = self.array(path)
            if bad and arr is not None:
                keep &= ~np.isin(rows // arr.chunks[0], sorted(bad))
        return rows[keep]

    def recompute(self, complete: set[str]) -> None:
        """Sign bits and predictions of a sample of rows against recomputation from the features."""
        from repint.signs import sign_bits

        bnd = BOUNDARIES.of()
        if bnd.name not in complete or {bnd["W"], bnd["b"]} & set(self.bad_chunks):
            return
        try:
            w, b = (self.store.read(bnd[a], allow_incomplete=True) for a in ("W", "b"))
        except Exception:
            return
        for split in SPLITS:
            ingest, signs = INGEST.of(split), SIGNS.of(split)
            features, bits = ingest["features"], signs["signs"]
            n = self.dims.get(f"N/{split}")
            if not {ingest.name, signs.name} <= complete or not n or self.array(features) is None \
                    or self.array(bits) is None:
                continue
            rows = np.unique(np.concatenate([self.rng.choice(n, size=min(self.sample, n), replace=False), [0, n - 1]]))
            rows = self.readable(rows, features, bits)
            if not len(rows):
                continue
            try:
                feats = self.store.read_rows(features, rows, allow_incomplete=True)
                stored = self.store.read_rows(bits, rows, allow_incomplete=True)
            except Exception as exc:
                self.report.error(f"cannot read the sampled rows ({type(exc).__name__}: {exc})", bits)
                continue
            if stored.shape[1:] != (-(-len(b) // 8),) or feats.reshape(len(rows), -1).shape[1] != w.shape[1]:
                continue  # a shape error, reported above
            wrong = rows[(sign_bits(feats, w, b) != stored).any(axis=1)]
            self.report.rows_recomputed += len(rows)
            if len(wrong):
                size = int(self.root[bits].chunks[0])
                chunks = sorted({int(i) // size for i in wrong})[:10]
                self.report.error(f"sign bits of rows {wrong[:10].tolist()} (chunks {chunks}) differ from "
                                  "<W, ψ(x)> + b > 0 recomputed from the stored features, W and b", bits)
            rows = self.readable(rows, ingest["logits"], ingest["predictions"])
            try:
                logits = self.store.read_rows(ingest["logits"], rows, allow_incomplete=True)
                preds = self.store.read_rows(ingest["predictions"], rows, allow_incomplete=True)
            except Exception:
                continue
            off = rows[preds != logits.argmax(1)]
            if len(off):
                self.report.error(f"predictions of rows {off[:10].tolist()} are not the argmax of the logits",
                                  ingest["predictions"])


def verify_store(url: str, storage_options: Mapping[str, Any] | None = None, *, sample: int = 64,
                 seed: int = 0, data: bool = True) -> VerifyReport:
    """Check the store at ``url``; the report lists every problem with its array path and chunk.
    ``data``: also check that the images it was ingested from are unchanged
    (:mod:`repint.storage.verify_data`). Raises :class:`repint.storage.StoreError` when there is no
    store there."""
    store = FeatureStore(url, storage_options, mode="r")
    report = VerifyReport(url=store.url, writer=store.lock_holder())
    complete = set()
    incomplete = store.incomplete_stages()
    for stage, info in store.root.attrs.get("stages", {}).items():
        if info.get("complete"):
            complete.add(stage)
            report.stages[stage] = "complete"
        else:
            report.stages[stage] = f"incomplete ({incomplete.get(stage, 'unknown')})"
            report.warning(f"stage {stage!r} is not complete ({incomplete.get(stage, 'unknown')}): "
                           + ("a run is writing it now" if report.writer else
                              "the run that wrote it stopped; `repint run` again resumes it"))
    _Checker(store, report, sample, seed).run(complete)
    if data:
        from repint.storage.verify_data import check_data

        for split in SPLITS:
            if INGEST.of(split).name in complete:
                check_data(store.attrs, split, report)
    return report
