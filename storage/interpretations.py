"""A run's interpretations, loaded read-only from its store and applied to new images.

``Interpretations.load(store)`` rebuilds the model the store records (architecture, checkpoint with its
SHA-256 checked, normalisation, ψ layer) and reads the centres, the sampled boundaries, the polytopes
and each method's reusable interpretations; :meth:`Interpretations.explain` computes ψ and the logits
of new images in batches, their sign bits, the interpretation each reuses exactly as the evaluation
assigns unseen images (:func:`repint.explain.assign_images`, the store's fallback rule) and the
method's heat maps (:class:`repint.explain.Explanation`). Nothing is written to the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repint.contents import file_sha256
from repint.data import decode_image, image_array, source_from_spec
from repint.explain import Explanation, assign_images
from repint.methods import Method, get_method
from repint.model import PSI_MODULE, SplitModel
from repint.nets import build_split, resolve_device
from repint.signs import sign_matrix
from repint.storage.errors import StoreError
from repint.storage.layout import BOUNDARIES, CENTRES, EVALUATE, INGEST, INTERPRET, POLYTOPES
from repint.storage.store import FeatureStore
from repint.variants import Variant

__all__ = ["Interpretations", "InputImages"]

InputImages = np.ndarray | Sequence[Any]  #: ``[n, C, H, W]`` pixel-space arrays, PIL images or paths
REQUIRED = (INGEST.of("reference").name, CENTRES.of().name, BOUNDARIES.of().name, POLYTOPES.of().name)
RANK_BLOCK = 1024  # covered reference images projected at a time (Eq. 6)


class Interpretations:
    """The interpretations of one store, applied to new images (scikit-learn-like: arrays in and out).

    >>> ri = Interpretations.load("runs/demo/run-0/store.zarr")            # doctest: +SKIP
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

    # loading ----------------------------------------------------------------------------------
    @classmethod
    def load(cls, store: str | Path, storage_options: dict[str, Any] | None = None, *, checkpoint: str | None = None,
             device: str = "cpu", batch_size: int = 64) -> Interpretations:
        """Open ``store`` (a path or fsspec URL) read-only and rebuild its model. ``checkpoint`` points at
        the checkpoint where it moved (its SHA-256 must still be the one the store records). An
        incomplete store, or a checkpoint whose contents changed, is a :class:`StoreError` naming what
        to do."""
        fs = FeatureStore(str(store), storage_options, mode="r")
        for stage in REQUIRED:
            fs.require_complete(stage)
        if "model" not in fs.attrs:
            raise StoreError(f"Store {fs.url} records no model; it was not written by `repint run`.")
        model = dict(fs.attrs["model"])
        if checkpoint is not None:
            model["checkpoint"] = str(checkpoint)
        _check_checkpoint(fs.url, model)
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
        """The reference images' source the store records (for drawing similar images)."""
        if self._reference is None:
            self._reference = source_from_spec(dict(self.store.attrs["data_reference"]))
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
        if isinstance(images, np.ndarray | torch.Tensor):
            x = np.asarray(images, dtype=np.float32)
            x = x[None] if x.ndim == 3 else x
            if x.ndim != 4 or x.shape[1:] != (channels, size, size):
                raise ValueError(f"images have shape {tuple(np.shape(images))}; the model takes"
                                 f" [n, {channels}, {size}, {size}] images in [0, 1] (or PIL images, paths).")
            if not np.isfinite(x).all():
                raise ValueError("images hold NaN or infinite values; pass pixel values in [0, 1].")
            return x, [str(i) for i in range(len(x))]
        arrays, ids = [], []
        for i, item in enumerate(images):
            if isinstance(item, str | Path):
                arrays.append(decode_image(Path(item), size, channels))
                ids.append(str(item))
            else:
                arrays.append(image_array(item, size, channels))
                ids.append(str(i))
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
                           logits=logits, ids=ids, _rank=lambda v, psi, k: self._similar(v, psi, k, s["unit_normals"]))

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


def _check_checkpoint(url: str, model: dict[str, Any]) -> None:
    """The checkpoint the store was computed with must still be there, with the same contents."""
    path, want = model.get("checkpoint"), model.get("checkpoint_sha256")
    if not path:
        return
    p = Path(path).expanduser()
    if not p.is_file():
        raise StoreError(f"Store {url} was computed with the checkpoint {path}, which is not there: pass its new "
                         "location (`checkpoint=` / `--checkpoint`).")
    now = file_sha256(p) if want else None
    if want and now != want:
        raise StoreError(f"Store {url} was computed with a checkpoint whose SHA-256 starts {want}, but {path} is now "
                         f"{now}: the model changed since. Re-run `repint run` on the new checkpoint, or pass "
                         "the original one (`checkpoint=` / `--checkpoint`).")
