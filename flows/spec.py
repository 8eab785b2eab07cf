"""Build the run spec from a config: data sources, the model (training the default one on first use
for the embedded demo), the store location."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from repint.config import Config
from repint.data import ImageSource, source_from_spec
from repint.nets import VGG_WIDTHS, VGGNet
from repint.tasks.common import RunSpec


def data_sources(cfg: Config) -> tuple[ImageSource, ImageSource, str]:
    d = cfg.data
    if d.kind == "digits":
        ref = source_from_spec({"kind": "digits", "split": "reference", "image_size": d.image_size, "seed": 0,
                                "unseen_fraction": 0.3, "limit": d.limit})
        uns = source_from_spec({**ref.spec(), "split": "unseen"})
        return ref, uns, "digits"
    if not d.reference or not d.unseen:
        raise ValueError(f"data.kind: {d.kind} needs both data.reference and data.unseen.")
    if d.kind == "arrays":
        return (_named("data.reference", {"kind": "arrays", "path": d.reference}),
                _named("data.unseen", {"kind": "arrays", "path": d.unseen}), Path(d.reference).stem)
    # built through source_from_spec's cache, so the tasks of this process never scan the folder again
    ref = _named("data.reference", {"kind": "imagefolder", "root": d.reference, "image_size": d.image_size,
                                    "per_class": d.reference_per_class, "seed": cfg.interpretation.seed,
                                    "classes": None})
    uns = _named("data.unseen", {"kind": "imagefolder", "root": d.unseen, "image_size": d.image_size,
                                 "per_class": d.unseen_per_class, "seed": cfg.interpretation.seed,
                                 "classes": ref.class_names})
    return ref, uns, Path(d.reference).resolve().parent.name or "imagefolder"


def _named(key: str, spec: dict[str, Any]) -> ImageSource:
    """A source whose errors name the config key that points at it."""
    try:
        return source_from_spec(spec)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{key}: {exc}") from exc
    except (ValueError, OSError) as exc:
        raise ValueError(f"{key}: {exc}") from exc


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def default_layer(architecture: str, n_classes: int, image_size: int) -> str | None:
    if architecture in VGG_WIDTHS:
        return VGGNet(n_classes, image_size=image_size, widths=VGG_WIDTHS[architecture]).psi_layer
    return None


def validate_model(model: dict[str, Any]) -> None:
    """Build and split the model once before any flow starts, so a wrong layer name, a head that is
    not piecewise linear, or a checkpoint that does not load (a pickle carrying code, missing or
    unexpected keys, wrong shapes) is reported at once, not from inside a task."""
    from repint.model import Classifier, split_model
    from repint.nets import build_model, load_checkpoint

    net = build_model(model["architecture"], model["num_classes"], model["image_size"])
    if model.get("checkpoint"):
        load_checkpoint(net, model["checkpoint"])
    split_model(Classifier(net, tuple(model["mean"]), tuple(model["std"])), "net." + model["layer"],
                allow_nonlinear_head=model["allow_nonlinear_head"])


def build_spec(cfg: Config, out_dir: str | Path, checkpoint: str | None = None) -> RunSpec:
    """A :class:`RunSpec` for ``cfg``; ``checkpoint`` overrides ``cfg.model.checkpoint``."""
    ref, uns, name = data_sources(cfg)
    n_classes = cfg.model.num_classes or len(ref.class_names)
    if n_classes < 2:
        if len(ref.class_names) == 1:
            raise ValueError(f"data.reference has a single class ({ref.class_names[0]!r}): RI explains a classifier "
                             "of at least two classes (the boundaries lie between classes). Add the other classes' "
                             "folders, or set model.num_classes to the model's number of outputs.")
        raise ValueError("The reference data has no labels to count classes from: set model.num_classes.")
    ckpt = checkpoint or cfg.model.checkpoint
    if ckpt and not Path(ckpt).is_file():
        raise FileNotFoundError(f"model.checkpoint {ckpt} does not exist. Train one with `repint train CONFIG`.")
    layer = cfg.model.layer or default_layer(cfg.model.architecture, n_classes, cfg.data.image_size)
    if layer is None:
        raise ValueError(f"model.layer is required for architecture {cfg.model.architecture!r}: name the layer "
                         "whose output is psi (e.g. 'features.35' for torchvision's vgg19).")
    model: dict[str, Any] = {
        "architecture": cfg.model.architecture, "checkpoint": ckpt, "num_classes": n_classes,
        "image_size": cfg.data.image_size, "layer": layer, "mean": list(cfg.data.mean), "std": list(cfg.data.std),
        "allow_nonlinear_head": cfg.model.allow_nonlinear_head,
        "checkpoint_sha256": file_sha256(ckpt) if ckpt else None,
    }
    validate_model(model)
    out = Path(out_dir).resolve()
    return RunSpec(
        store=cfg.store or str(out / "store.zarr"), storage_options=cfg.storage_options, out_dir=str(out),
        dataset=name, reference=ref.spec(), unseen=uns.spec(), model=model,
        interpretation=cfg.interpretation.model_dump(), evaluation=cfg.evaluation.model_dump(),
        runtime=cfg.runtime.model_dump(),
    )
