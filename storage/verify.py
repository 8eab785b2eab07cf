"""``repint verify STORE``: check a feature store's integrity and say exactly what is wrong.

Checks, for every stage the store records as complete:

* layout: the stage's arrays exist (``docs/store-layout.md``);
* shapes and dtypes agree across arrays (N images per split, C classes, D = K*h*w, M boundaries,
  V centres);
* completion records: every unit of ``_done/<stage>`` is true;
* chunks: every chunk object of the stage's arrays is present and decodes (a missing one is named
  with its array path and chunk index; in stores written before every chunk was written, a missing
  chunk may be one of fill values and is a warning);
* fingerprints: every stage has a fingerprint and an epoch; the model and data fingerprints are
  recorded;
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

from repint.storage.store import FeatureStore, StoreLock

__all__ = ["Finding", "VerifyReport", "stage_arrays", "verify_store"]

_SPLITS = ("reference", "unseen")
_POLYTOPE_ARRAYS = ("boundaries", "orientation", "covered", "tau", "delta", "n_covered", "n_other_covered", "size",
                    "purity")
_EVALUATION_ARRAYS = ("centre", "covered", "y", "y_masked", "kept_fraction")


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
    """The arrays a complete ``stage`` must have (``interpret-<m>``: every array under its group)."""
    m = re.fullmatch(r"ingest-(reference|unseen)", stage)
    if m:
        return [f"{m[1]}/{a}" for a in ("features", "logits", "predictions", "labels", "ids")]
    if stage == "centres":
        return [f"centres/{a}" for a in ("vectors", "labels", "input_index", "predicted_class")]
    if stage == "boundaries":
        return [f"boundaries/{a}" for a in ("W", "b", "top2", "source", "owner")]
    m = re.fullmatch(r"signs-(reference|unseen)", stage)
    if m:
        return [f"signs/{m[1]}"]
    if stage == "polytopes":
        return [f"polytopes/{a}" for a in _POLYTOPE_ARRAYS]
    if stage.startswith("interpret-"):
        group = f"interpretations/{stage[len('interpret-'):]}"
        if group not in root:
            return [group]
        return [f"{group}/{p}" for p, node in root[group].members(max_depth=None) if isinstance(node, zarr.Array)]
    if stage.startswith("evaluate-"):
        return [f"evaluation/{stage[len('evaluate-'):]}/{a}" for a in _EVALUATION_ARRAYS]
    return []


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


class _Checker:
    def __init__(self, store: FeatureStore, report: VerifyReport, sample: int, seed: int) -> None:
        self.store, self.root, self.report = store, store.root, report
        self.sample, self.rng = sample, np.random.default_rng(seed)
        self.strict_chunks = bool(self.root.attrs.get("chunks_always_written"))
        self.bad_chunks: dict[str, set[int]] = {}  # array -> first-axis index of missing / undecodable chunks

    def array(self, path: str) -> zarr.Array | None:
        try:
            node = self.root[path]
        except (KeyError, FileNotFoundError):
            return None
        return node if isinstance(node, zarr.Array) else None

    def expect(self, path: str, shape: tuple[int | None, ...], kind: str) -> zarr.Array | None:
        """``path`` exists with ``shape`` (None: any length) and a dtype of ``kind`` (numpy kinds)."""
        arr = self.array(path)
        if arr is None:
            self.report.error("missing (its stage is complete)", path)
            return None
        if len(arr.shape) != len(shape) or any(e is not None and e != s for e, s in zip(shape, arr.shape,
                                                                                          strict=True)):
            want = "[" + ", ".join("*" if e is None else str(e) for e in shape) + "]"
            self.report.error(f"shape {list(arr.shape)} does not match the other arrays (expected {want})", path)
        dtype = arr.dtype if isinstance(arr.dtype, np.dtype) else np.dtype(object)
        if dtype.kind not in kind and not (kind == "U" and "string" in str(arr.dtype).lower()):
            self.report.error(f"dtype {arr.dtype} is not the layout's ({kind})", path)
        return arr

    # chunks -------------------------------------------------------------------------------------
    def chunks(self, path: str) -> None:
        arr = self.array(path)
        if arr is None:
            return
        base = arr.store_path.path.strip("/")
        keys = _stored_keys(self.root, f"{base}/")
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
                np.asarray(arr[region])
                self.report.chunks_checked += 1
            except Exception as exc:
                self.bad_chunks.setdefault(path, set()).add(idx[0] if idx else 0)
                self.report.error(f"chunk does not decode ({type(exc).__name__}: {exc})", path, idx)

    def done(self, stage: str, n_units: int | None = None) -> None:
        path = f"_done/{stage}"
        arr = self.array(path)
        if arr is None:
            self.report.error("completion records are missing (its stage is complete)", path)
            return
        self.chunks(path)
        if n_units is not None and arr.shape != (n_units,):
            self.report.error(f"{arr.shape[0]} units recorded, the stage's arrays have {n_units} chunks", path)
        try:
            done = np.asarray(arr[:])
        except Exception:
            return
        missing = np.flatnonzero(~done)
        if len(missing):
            self.report.error(f"stage {stage!r} is marked complete but units {missing[:10].tolist()} have no "
                              "completion record", path)

    # the checks ---------------------------------------------------------------------------------
    def run(self, complete: set[str]) -> None:
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
        sizes: dict[str, int] = {}
        feature_shape = n_classes = None
        for split in _SPLITS:
            stage = f"ingest-{split}"
            if stage not in complete:
                continue
            if not attrs.get(f"data_fingerprint_{split}"):
                r.error(f"the data fingerprint of the {split} set (data_fingerprint_{split}) is not recorded")
            if not (attrs.get("model") or {}).get("architecture"):
                r.error("the model (architecture, checkpoint and its SHA-256) is not recorded")
            feats = self.expect(f"{split}/features", (None, None, None, None), "f")
            if feats is None:
                continue
            n = sizes[split] = feats.shape[0]
            if feature_shape is not None and feats.shape[1:] != feature_shape:
                r.error(f"ψ has shape {list(feats.shape[1:])} here and {list(feature_shape)} in the other split",
                        f"{split}/features")
            feature_shape = feats.shape[1:]
            logits = self.expect(f"{split}/logits", (n, n_classes), "f")
            if logits is not None:
                n_classes = logits.shape[1]
            self.expect(f"{split}/predictions", (n,), "i")
            self.expect(f"{split}/labels", (n,), "i")
            self.expect(f"{split}/ids", (n,), "UOT")
            self.done(stage, math.ceil(n / feats.chunks[0]) if n else 0)
        d = int(np.prod(feature_shape)) if feature_shape is not None else None
        n_ref, v, m = sizes.get("reference"), None, None
        if "centres" in complete:
            vec = self.expect("centres/vectors", (None, d), "f")
            v = vec.shape[0] if vec is not None else None
            self.expect("centres/labels", (n_ref,), "i")
            self.expect("centres/input_index", (v,), "i")
            self.expect("centres/predicted_class", (v,), "i")
            self.done("centres")
        if "boundaries" in complete:
            w = self.expect("boundaries/W", (None, d), "f")
            m = w.shape[0] if w is not None else None
            self.expect("boundaries/b", (m,), "f")
            self.expect("boundaries/top2", (m, 2), "i")
            self.expect("boundaries/source", (m,), "i")
            self.expect("boundaries/owner", (m,), "i")
            self.done("boundaries")
        for split in _SPLITS:
            stage = f"signs-{split}"
            if stage in complete:
                signs = self.expect(f"signs/{split}", (sizes.get(split), -(-m // 8) if m else None), "u")
                if signs is not None:
                    self.done(stage, math.ceil(signs.shape[0] / signs.chunks[0]) if signs.shape[0] else 0)
        if "polytopes" in complete:
            q_max = None
            for name in _POLYTOPE_ARRAYS:
                shape = {"boundaries": (v, q_max), "orientation": (v, q_max), "covered": (v, n_ref)}.get(name, (v,))
                arr = self.expect(f"polytopes/{name}", shape, {"orientation": "b", "covered": "b",
                                                                 "purity": "f"}.get(name, "i"))
                if name == "boundaries" and arr is not None:
                    q_max = arr.shape[1]
            self.done("polytopes", v)
        for stage in sorted(complete):
            if stage.startswith("interpret-"):
                paths = stage_arrays(stage, self.root)
                if not paths or (len(paths) == 1 and paths[0] not in self.root):
                    r.error("missing (its stage is complete)", f"interpretations/{stage[len('interpret-'):]}")
                elif v is not None:
                    group = self.root[f"interpretations/{stage[len('interpret-'):]}"]
                    have = {name for name, _ in group.groups()}
                    lacking = [c for c in range(v) if f"c{c}" not in have]
                    if lacking:
                        r.error(f"no interpretation of centres {lacking[:10]}", group.path)
                self.done(stage, v)
            elif stage.startswith("evaluate-"):
                for name in _EVALUATION_ARRAYS:
                    self.expect(f"evaluation/{stage[len('evaluate-'):]}/{name}", (sizes.get("unseen"),),
                                "bif")
                arr = self.array(f"evaluation/{stage[len('evaluate-'):]}/y")
                self.done(stage, math.ceil(arr.shape[0] / arr.chunks[0]) if arr is not None and arr.shape[0]
                          else None)
        for stage in sorted(complete):
            for path in stage_arrays(stage, self.root):
                if self.array(path) is not None:
                    self.chunks(path)
        self.recompute(complete, sizes)

    def readable(self, rows: np.ndarray, *paths: str) -> np.ndarray:
        """``rows`` without those in a chunk of ``paths`` that is missing or does not decode (reported)."""
        keep = np.ones(len(rows), dtype=bool)
        for path in paths:
            bad = self.bad_chunks.get(path)
            arr = self.array(path)
            if bad and arr is not None:
                keep &= ~np.isin(rows // arr.chunks[0], sorted(bad))
        return rows[keep]

    def recompute(self, complete: set[str], sizes: Mapping[str, int]) -> None:
        """Sign bits and predictions of a sample of rows against recomputation from the features."""
        from repint.signs import sign_bits

        if "boundaries" not in complete or {"boundaries/W", "boundaries/b"} & set(self.bad_chunks):
            return
        try:
            w, b = np.asarray(self.root["boundaries/W"][...]), np.asarray(self.root["boundaries/b"][...])
        except Exception:
            return
        for split in _SPLITS:
            n = sizes.get(split)
            if f"signs-{split}" not in complete or not n:
                continue
            rows = np.unique(np.concatenate([self.rng.choice(n, size=min(self.sample, n), replace=False), [0, n - 1]]))
            rows = self.readable(rows, f"{split}/features", f"signs/{split}")
            if not len(rows):
                continue
            try:
                feats = self.root[f"{split}/features"].get_orthogonal_selection((rows,))
                stored = self.root[f"signs/{split}"].get_orthogonal_selection((rows,))
            except Exception as exc:
                self.report.error(f"cannot read the sampled rows ({type(exc).__name__}: {exc})", f"signs/{split}")
                continue
            if stored.shape[1:] != (-(-len(b) // 8),) or feats.reshape(len(rows), -1).shape[1] != w.shape[1]:
                continue  # a shape error, reported above
            wrong = rows[(sign_bits(feats, w, b) != stored).any(axis=1)]
            self.report.rows_recomputed += len(rows)
            if len(wrong):
                size = int(self.root[f"signs/{split}"].chunks[0])
                chunks = sorted({int(i) // size for i in wrong})[:10]
                self.report.error(f"sign bits of rows {wrong[:10].tolist()} (chunks {chunks}) differ from "
                                  "<W, ψ(x)> + b > 0 recomputed from the stored features, W and b", f"signs/{split}")
            rows = self.readable(rows, f"{split}/logits", f"{split}/predictions")
            try:
                logits = self.root[f"{split}/logits"].get_orthogonal_selection((rows,))
                preds = self.root[f"{split}/predictions"].get_orthogonal_selection((rows,))
            except Exception:
                continue
            off = rows[np.asarray(preds) != np.asarray(logits).argmax(1)]
            if len(off):
                self.report.error(f"predictions of rows {off[:10].tolist()} are not the argmax of the logits",
                                  f"{split}/predictions")


def verify_store(url: str, storage_options: Mapping[str, Any] | None = None, *, sample: int = 64,
                 seed: int = 0) -> VerifyReport:
    """Check the store at ``url``; the report lists every problem with its array path and chunk.
    Raises :class:`repint.storage.StoreError` when there is no store there."""
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
    return report
