"""A run's interpretations, loaded read-only from its store and applied to new images.

``Interpretations.load(store)`` rebuilds the model the store records (architecture, checkpoint with its
SHA-256 checked, normalisation, ψ layer) and reads the centres, the sampled boundaries, the polytopes
and each method's reusable interpretations; :meth:`Interpretations.explain` computes ψ and the logits
of new images in batches, their sign bits, the interpretation each reuses exactly as the evaluation
assigns unseen images (:func:`repint.explain.assign_images`, the store's fallback rule) and the
method's heat maps (:class:`repint.explain.Explanation`). Nothing is written to the store.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repint.contents import file_sha256
from repint.data import decode_image, image_array, source_from_spec
from repint.explain import Assigned, Explanation, assign_images
from repint.methods import Method, get_method
from repint.model import PSI_MODULE, SplitModel
from repint.nets import build_split, resolve_device
from repint.signs import sign_matrix
from repint.storage.errors import StoreError
from repint.storage.layout import BOUNDARIES, CENTRES, EVALUATE, INGEST, INTERPRET, POLYTOPES
from repint.storage.lock import StoreLock
from repint.storage.store import FeatureStore
from repint.variants import Variant

__all__ = ["Interpretations", "InputImages"]

InputImages = np.ndarray | Sequence[Any]  #: ``[n, C, H, W]`` pixel-space arrays, PIL images or paths
REQUIRED = (INGEST.of("reference").name, CENTRES.of().name, BOUNDARIES.of().name, POLYTOPES.of().name)
RANK_BLOCK = 1024  # covered reference images projected at a time (Eq. 6)


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    try:
        from threadpoolctl import ThreadpoolController  # scikit-learn's dependency
    except ImportError:
        return None
    return ThreadpoolController()


def one_blas_thread() -> contextlib.AbstractContextManager:
    """numpy's BLAS on one thread inside the block (threadpoolctl; nothing without it). Performance
    only: a chunk's sign bits and distances to the centres are small products (about 1 ms each), but a
    multi-threaded OpenBLAS call leaves its worker threads spinning afterwards, and torch's threads,
    which draw the heat maps right after, then share the cores with them: ``explain`` ran 0.29-0.34x plain
    inference with it, 0.45-0.64x without it (``repint bench --only explain``, 2 cores). The products
    are the same bits on one thread (OpenBLAS splits a product by rows and columns, not along the sum)."""
    ctl = _blas_controller()
    return contextlib.nullcontext() if ctl is None else ctl.limit(limits=1, user_api="blas")


class Interpretations:
    """The interpretations of one store, applied to new images (scikit-learn-like: arrays in and out).

    >>> ri = Interpretations.load("runs/demo/store-run0.zarr")          # doctest: +SKIP
    >>> result = ri.explain(images)     # [n, C, H, W] in [0, 1], PIL images or paths  # doctest: +SKIP
    >>> result.interpretation, result.covered, result.heatmaps, result.similar(k=4)    # doctest: +SKIP
    """

    def __init__(self, store: FeatureStore, split: SplitModel, device: torch.device, batch_size: int = 64) -> None:
        self.store, self.split, self.device, self.batch_size = store, split, device, batch_size
        self.model_spec: dict[str, Any] = dict(store.attrs["model"])
        centres, polytopes = CENTRES.of(), POLYTOPES.of()
        self.centres = store.read(centres["vectors"])
        self.centre_class = store.read(centres["predicted_class"])
        self.input_index = store.read(centres["input_index"])
        self.polytope_boundaries = store.read(polytopes["boundaries"])
        self.polytope_orientation = store.read(polytopes["orientation"])
        self.W = store.read(BOUNDARIES.of()["W"])
        self.b = store.read(BOUNDARIES.of()["b"])
        self.reference_ids = store.read(INGEST.of("reference")["ids"])
        self._interps: dict[tuple[str, int], dict[str, np.ndarray]] = {}
        self._ranks: dict[tuple[str, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._methods: dict[str, Method] = {}
        self._reference = None
        self._warned: set[str] = set()

    # loading ----------------------------------------------------------------------------------
    @classmethod
    def load(cls, store: str | Path, storage_options: dict[str, Any] | None = None, *, checkpoint: str | None = None,
             device: str = "cpu", batch_size: int = 64) -> Interpretations:
        """Open ``store`` (a path or fsspec URL) read-only and rebuild its model. ``checkpoint`` points at
        the checkpoint where it moved (its SHA-256 must still be the one the store records). An
        incomplete store, or a checkpoint whose contents changed, is a :class:`StoreError` naming what
        to do."""
        fs = _open(str(store), storage_options)
        for stage in REQUIRED:
            fs.require_complete(stage)
        _require_current(fs, REQUIRED)
        StoreLock(str(store), storage_options).check()  # a run writing it now: its stages may change under us
        if "model" not in fs.attrs:
            raise StoreError(f"Store {fs.url} records no model; it was not written by `repint run`.")
        model = dict(fs.attrs["model"])
        if checkpoint is not None:
            model["checkpoint"] = str(checkpoint)
        _check_checkpoint(fs.url, model, given=checkpoint is not None)
        split, _ = build_split(model)
        out = cls(fs, split, resolve_device(device), batch_size)
        out.model_spec = model
        return out

    @property
    def methods(self) -> list[str]:
        """The methods whose interpretations the store holds (their labels)."""
        found = []
        for name, info in self.store.attrs.get("stages", {}).items():
            if name.startswith("interpret-") and info.get("complete"):
                key = name[len("interpret-"):]
                attrs = self._evaluation_attrs(key)
                found.append(str(attrs.get("method", key)))
        return found

    @property
    def n_interpretations(self) -> int:
        return len(self.centres)

    @property
    def class_names(self) -> list[str]:
        try:
            return list(self.reference_source().class_names)
        except Exception:  # names are a nicety: ids stand in where the reference data moved
            return []

    def reference_source(self) -> Any:
        """The reference images' source the store records (for drawing similar images), checked to hold
        the images the store was computed from (same ids, same fingerprint): a :class:`StoreError`
        where they moved or changed."""
        if self._reference is None:
            attrs, why = self.store.attrs, ""
            try:
                src = source_from_spec(dict(attrs["data_reference"]))
            except (OSError, ValueError) as exc:
                why = str(exc)
            else:
                if list(src.ids) != [str(i) for i in self.reference_ids]:
                    why = f"its images are not those of the store ({len(src.ids)} now, {len(self.reference_ids)} then)"
                elif attrs.get("data_fingerprint_reference") not in (None, src.fingerprint()):
                    why = "its images changed since the store was written"
            if why:
                raise StoreError(f"Store {self.store.url}: the reference images cannot be drawn: {why}. Explain "
                                 "without them (`--top 0` or `--no-png`; similar() needs no images) or restore them.")
            self._reference = src
        return self._reference

    def _evaluation_attrs(self, key: str) -> dict[str, Any]:
        group = EVALUATE.of(key).group
        try:
            return dict(self.store.node_attrs(group, allow_incomplete=True)) if group in self.store else {}
        except Exception:
            return {}

    def settings(self, method: str = "RI") -> dict[str, Any]:
        """How the evaluation reused ``method``'s interpretations: ``fallback``, ``keep_fraction``,
        ``unit_normals`` (recorded by the evaluation; the defaults for stores of before)."""
        from repint.config import EvaluationConfig, InterpretationConfig

        v = Variant.parse(method)
        attrs = self._evaluation_attrs(v.key)
        if "fallback" not in attrs and v.key not in self._warned:
            self._warned.add(v.key)  # once per store and method, not once per chunk
            logging.getLogger("repint").warning(
                f"store {self.store.url} records no reuse settings of {method} (evaluated before they were recorded, "
                "or not yet): using the defaults (fallback nearest, 20% kept); run `repint run` again to record them")
        ev, interp = EvaluationConfig(), InterpretationConfig()
        return {"fallback": attrs.get("fallback", v.evaluation(ev).fallback),
                "keep_fraction": float(attrs.get("keep_fraction", ev.keep_fraction)),
                "unit_normals": bool(attrs.get("unit_normals", v.interpretation(interp).unit_normals))}

    def method(self, name: str) -> Method:
        """The method ``name``, bound to the model (its interpretations must be in the store)."""
        if name not in self._methods:
            v = Variant.parse(name)
            stage = INTERPRET.of(v.interpreted.key).name
            info = self.store.attrs.get("stages", {}).get(stage)
            if not (info and info.get("complete")):
                raise StoreError(f"Store {self.store.url} holds no complete interpretations of {name!r} (stage "
                                 f"{stage!r}); methods with interpretations here: {', '.join(self.methods) or 'none'}.")
            _require_current(self.store, [stage])
            self._methods[name] = get_method(name).bind(self.split.composed, PSI_MODULE)
        return self._methods[name]

    def interpretation(self, method: str, centre: int) -> dict[str, np.ndarray]:
        """``method``'s stored reusable interpretation of ``centre`` (e.g. channel weights)."""
        key = (Variant.parse(method).interpreted.key, int(centre))
        if key not in self._interps:
            self._interps[key] = self.store.read_group(INTERPRET.of(key[0])[f"c{centre}"])
        return self._interps[key]

    # images -----------------------------------------------------------------------------------
    def images(self, images: InputImages) -> tuple[np.ndarray, list[str]]:
        """``images`` as the model's input ``[n, C, H, W]`` float32 in ``[0, 1]`` and their ids: an
        array as it is (checked), PIL images and paths decoded as an ImageFolder's images are."""
        size, channels = int(self.model_spec["image_size"]), len(self.model_spec["mean"])
        if isinstance(images, str | Path) or hasattr(images, "mode"):  # one path, one PIL image
            images = [images]
        elif isinstance(images, list | tuple) and images and all(isinstance(i, np.ndarray) for i in images):
            images = np.stack(images)
        if isinstance(images, np.ndarray | torch.Tensor):
            x = np.asarray(images, dtype=np.float32)
            x = x[None] if x.ndim == 3 else x
            if x.ndim != 4 or x.shape[1:] != (channels, size, size):
                raise ValueError(f"images have shape {tuple(np.shape(images))}; the model takes"
                                 f" [n, {channels}, {size}, {size}] images in [0, 1] (or PIL images, paths).")
            if not np.isfinite(x).all():
                raise ValueError("images hold NaN or infinite values; pass pixel values in [0, 1].")
            if x.size and (x.min() < -1e-3 or x.max() > 1 + 1e-3):
                raise ValueError(f"images hold values in [{x.min():.3g}, {x.max():.3g}]; the model takes pixel values "
                                 "in [0, 1] (divide 8-bit images by 255; the normalisation is the model's own).")
            return x, [str(i) for i in range(len(x))]
        arrays, ids = [], []
        for i, item in enumerate(images):
            if isinstance(item, str | Path):
                arrays.append(decode_image(Path(item), size, channels))
                ids.append(str(item))
            elif hasattr(item, "mode") and hasattr(item, "convert"):
                arrays.append(image_array(item, size, channels))
                ids.append(str(i))
            else:
                raise ValueError(f"image {i} is a {type(item).__name__}; pass arrays [n, C, H, W], PIL images, paths.")
        if not arrays:
            return np.zeros((0, channels, size, size), np.float32), []
        return np.stack(arrays).astype(np.float32), ids

    def forward(self, x: np.ndarray, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """ψ ``[n, K, h, w]`` and logits ``[n, C]`` of pixel-space images, in batches, without gradients."""
        bs = batch_size or self.batch_size
        psi, head = self.split.psi.to(self.device), self.split.head.to(self.device)
        feats, logits = [], []
        with torch.no_grad():
            for i in range(0, len(x), bs):
                f = psi(torch.as_tensor(x[i: i + bs], device=self.device))
                feats.append(f.float().cpu().numpy())
                logits.append(head(f).float().cpu().numpy())
        if not feats:
            return np.zeros((0, *self.centres.shape[1:]), np.float32), np.zeros((0, len(self.centre_class)), np.float32)
        return np.concatenate(feats), np.concatenate(logits)

    # explaining -------------------------------------------------------------------------------
    def explain(self, images: InputImages, method: str = "RI", *, ids: Iterable[str] | None = None,
                batch_size: int | None = None) -> Explanation:
        """Explain ``images`` by ``method``'s interpretations: predicted class and probability, the
        interpretation each reuses (as the evaluation assigns unseen images), covered or fallback, the
        violated boundaries, the heat maps and the evaluation's kept pixels, and :meth:`~Explanation.similar`."""
        m, s = self.method(method), self.settings(method)
        x, found = self.images(images)
        feats, logits = self.forward(x, batch_size)
        return self.explain_features(x, feats, logits, method, list(ids) if ids is not None else found, m, s)

    def explain_features(self, x: np.ndarray, feats: np.ndarray, logits: np.ndarray, method: str, ids: list[str],
                         m: Method | None = None, s: dict[str, Any] | None = None) -> Explanation:
        """:meth:`explain` from images whose ψ and logits are known (the store's own unseen images)."""
        m, s = m or self.method(method), s or self.settings(method)
        if not len(x):  # nothing to explain: the empty result, with its shapes
            assigned = Assigned(*(np.zeros(0, t) for t in (np.int64, np.float64, np.int64, bool, bool)), [])
            return Explanation(method, assigned, np.zeros((0, *x.shape[-2:]), np.float32),
                               np.zeros((0, *x.shape[-2:]), bool), feats, logits, [], lambda v, psi, k: ([], []),
                               m.uses_polytope)
        with one_blas_thread():  # performance: see one_blas_thread (the same bits)
            signs = sign_matrix(feats, self.W, self.b)
            assigned = assign_images(feats, logits, signs, self.centres, self.centre_class, self.polytope_boundaries,
                                     self.polytope_orientation, s["fallback"], m.uses_polytope)
        maps = np.zeros((len(x), *x.shape[-2:]), np.float32)
        kept = np.zeros((len(x), *x.shape[-2:]), bool)
        for v in np.unique(assigned.interpretation):
            sel = assigned.interpretation == v
            mv, kv = m.reused_maps(self.interpretation(method, int(v)), x[sel], feats[sel], (s["keep_fraction"],))
            maps[sel], kept[sel] = mv, kv[0]
        return Explanation(method=method, assigned=assigned, heatmaps=maps, kept=kept, features=feats,
                           logits=logits, ids=ids, _rank=lambda v, psi, k: self._similar(v, psi, k, s["unit_normals"]),
                           uses_polytope=m.uses_polytope)

    def _projections(self, centre: int, unit: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The reference images ``P_centre`` covers, its (unit) normals ``[P, D]`` and their projections
        ``[n_covered, P]`` (read block by block: never all covered features at once)."""
        key = (str(unit), centre)
        if key not in self._ranks:
            polytopes, feats = POLYTOPES.of(), INGEST.of("reference")["features"]
            covered = np.flatnonzero(self.store.read(polytopes["covered"], centre))
            ids = self.polytope_boundaries[centre]
            Wf = self.W[ids[ids >= 0]].astype(np.float64)
            if unit and len(Wf):
                norms = np.linalg.norm(Wf, axis=1, keepdims=True)
                Wf = Wf / np.where(norms > 0, norms, 1.0)
            proj = np.zeros((len(covered), len(Wf)))
            if len(Wf):
                for lo in range(0, len(covered), RANK_BLOCK):
                    rows = self.store.read_rows(feats, covered[lo: lo + RANK_BLOCK])
                    proj[lo: lo + len(rows)] = rows.reshape(len(rows), -1).astype(np.float64) @ Wf.T
            self._ranks[key] = (covered, Wf, proj)
        return self._ranks[key]

    def _similar(self, centre: int, psi: np.ndarray, k: int, unit: bool) -> tuple[np.ndarray, np.ndarray]:
        """Eq. 6: the ``k`` covered reference images nearest ``psi`` over ``P_centre``'s boundaries."""
        covered, Wf, proj = self._projections(centre, unit)
        if not len(Wf) or not len(covered):
            idx = covered[:k]
        else:
            dist = np.abs(proj - Wf @ np.asarray(psi, np.float64).reshape(-1)).sum(axis=1)
            idx = covered[np.argsort(dist, kind="stable")[:k]]
        return self.reference_ids[idx], idx


def _open(url: str, storage_options: dict[str, Any] | None) -> FeatureStore:
    """The store read-only; where there is none, the stores of a study's runs beside it are named."""
    try:
        return FeatureStore(url, storage_options, mode="r")
    except StoreError as exc:
        here = Path(url).expanduser()
        runs = sorted(here.parent.glob("store-run*.zarr")) if "://" not in url and here.parent.is_dir() else []
        if not runs:
            raise
        raise StoreError(f"{exc} A study of several runs keeps one store per run: "
                         f"{', '.join(str(r) for r in runs[:5])}.") from None


def _require_current(store: FeatureStore, names: Iterable[str]) -> None:
    """Each stage must be computed from its inputs as they are now: a rerun that stopped after it
    recomputed an input (new polytopes, say) and before this stage leaves it complete but stale."""
    stages = store.attrs.get("stages", {})
    for name in names:
        for read, fp in (stages.get(name) or {}).get("reads", {}).items():
            if (stages.get(read) or {}).get("fingerprint") != fp:
                raise StoreError(f"Store {store.url}: the stage {name!r} was computed from an earlier {read!r} (a run "
                                 "that stopped midway recomputed it): run `repint run` again to finish the store.")


def _check_checkpoint(url: str, model: dict[str, Any], given: bool = False) -> None:
    """The checkpoint the store was computed with must still be there, with the same contents."""
    path, want = model.get("checkpoint"), model.get("checkpoint_sha256")
    if not path:
        return
    p = Path(path).expanduser()
    if not p.is_file():
        raise StoreError(f"Store {url}: its checkpoint {path} is not there"
                         + (" (given as `checkpoint=` / `--checkpoint`)." if given else ": pass its new location "
                            "(`checkpoint=` / `--checkpoint`)."))
    now = file_sha256(p) if want else None
    if want and now != want:
        raise StoreError(f"Store {url} was computed with a checkpoint whose SHA-256 starts {want}, but {path} is now "
                         f"{now}: the model changed since. Re-run `repint run` on the new checkpoint, or pass "
                         "the original one (`checkpoint=` / `--checkpoint`).")
