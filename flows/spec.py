"""Build the run spec from a config: data sources, the model (training the default one on first use
for the embedded demo), the store location."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from repint.arrays import ArraySource
from repint.config import Config
from repint.contents import file_sha256
from repint.data import ImageSource, source_from_spec
from repint.nets import VGG_WIDTHS, VGGNet
from repint.tasks.runspec import RunSpec

AUTO_LAYER_IMAGES = 8  # reference images on which `layer: auto` counts the distinct boundaries of each cut


def data_sources(cfg: Config, channels: int | None = None) -> tuple[ImageSource, ImageSource, str]:
    """The reference and unseen sources of ``cfg``, decoded to ``channels`` (default :func:`input_channels`)."""
    d = cfg.data
    channels = channels or input_channels(cfg)
    extra = {} if channels == 3 else {"channels": channels}
    if d.kind == "digits":
        ref = source_from_spec({"kind": "digits", "split": "reference", "image_size": d.image_size, "seed": 0,
                                "unseen_fraction": 0.3, "limit": d.limit, **extra})
        uns = source_from_spec({**ref.spec(), "split": "unseen"})
        return ref, uns, "digits"
    if not d.reference or not d.unseen:
        raise ValueError(f"data.kind: {d.kind} needs both data.reference and data.unseen.")
    if d.kind == "arrays":
        ref = _named("data.reference", {"kind": "arrays", "path": d.reference, **extra})
        uns = _named("data.unseen", {"kind": "arrays", "path": d.unseen, **extra})
        _check_arrays(cfg, cast(ArraySource, ref), cast(ArraySource, uns))
        return ref, uns, Path(d.reference).stem
    # built through source_from_spec's cache, so the tasks of this process never scan the folder again
    ref = _named("data.reference", {"kind": "imagefolder", "root": d.reference, "image_size": d.image_size,
                                    "per_class": d.reference_per_class, "seed": cfg.interpretation.seed,
                                    "classes": None, **extra})
    uns = _named("data.unseen", {"kind": "imagefolder", "root": d.unseen, "image_size": d.image_size,
                                 "per_class": d.unseen_per_class, "seed": cfg.interpretation.seed,
                                 "classes": ref.class_names, **extra})
    return ref, uns, Path(d.reference).resolve().parent.name or "imagefolder"


def _named(key: str, spec: dict[str, Any]) -> ImageSource:
    """A source whose errors name the config key that points at it."""
    try:
        return source_from_spec(spec)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{key}: {exc}") from exc
    except (ValueError, OSError) as exc:
        raise ValueError(f"{key}: {exc}") from exc


def _check_arrays(cfg: Config, ref: ArraySource, uns: ArraySource) -> None:
    """What an ``.npz`` source cannot check alone: its images' size against ``data.image_size`` (the model is
    built for it) and the unseen labels against the reference's classes (arrays cannot skip an image)."""
    size = cfg.data.image_size
    for key, src in (("data.reference", ref), ("data.unseen", uns)):
        h, w = src.image_hw
        if (h, w) != (size, size):
            fix = f"set data.image_size: {h}, or resize the images to {size}x{size}" if h == w else \
                f"resize the images to {size}x{size} (the model takes square images of data.image_size)"
            raise ValueError(f"{key}: {src.path}: images are {h}x{w} but data.image_size is {size} "
                             f"(the model is built for {size}x{size} images): {fix}.")
    n_model = cfg.model.num_classes
    if n_model and len(ref.labels) and int(ref.labels.max()) >= n_model:
        raise ValueError(f"data.reference: {ref.path}: a label is {int(ref.labels.max())}, but model.num_classes is "
                         f"{n_model} (classes 0..{n_model - 1}): fix the labels, or set model.num_classes to the "
                         "model's number of outputs.")
    import numpy as np

    n_ref = len(ref.class_names)
    lacking = set(uns.labels.tolist()) - set(ref.labels.tolist()) - {-1} if len(ref.labels) else set()
    if n_ref and lacking:
        bad = np.isin(uns.labels, sorted(lacking))
        raise ValueError(f"data.unseen: {uns.path}: {int(bad.sum())} images are labelled with classes the reference "
                         f"set lacks (labels {sorted(set(uns.labels[bad].tolist()))[:10]}; data.reference has "
                         f"labels {sorted(set(ref.labels.tolist()))[:10]}): RI explains the reference's classes; "
                         "leave those images out.")


def input_channels(cfg: Config) -> int:
    """``data.channels``, else the input channels of the model's first convolution (3 for torchvision's and,
    unless told otherwise, the project's own nets; a ``module:function`` model is built once to look)."""
    if cfg.data.channels:
        return int(cfg.data.channels)
    if ":" not in cfg.model.architecture:
        return 3
    from repint.nets import build_model, input_channels_of

    channels = input_channels_of(build_model(cfg.model.architecture, cfg.model.num_classes or 2, cfg.data.image_size))
    return channels if channels in (1, 3) else 3


def normalisation(cfg: Config, channels: int) -> tuple[list[float], list[float]]:
    """``data.mean``/``data.std`` with one value per channel (a single value serves every channel; three equal
    values serve one channel)."""
    out = []
    for key in ("mean", "std"):
        v = [float(x) for x in getattr(cfg.data, key)]
        if len(v) == 1:
            v = v * channels
        elif len(v) != channels:
            if channels == 1 and len(set(v)) == 1:
                v = v[:1]
            else:
                raise ValueError(f"data.{key} has {len(v)} values but the model takes {channels}-channel images: "
                                 f"give {channels} value{'s' if channels > 1 else ''} (or set data.channels).")
        out.append(v)
    return out[0], out[1]


def default_layer(architecture: str, n_classes: int, image_size: int) -> str | None:
    if architecture in VGG_WIDTHS:
        return VGGNet(n_classes, image_size=image_size, widths=VGG_WIDTHS[architecture]).psi_layer
    return None


def validate_model(model: dict[str, Any]) -> dict[str, Any]:
    """Build and split the model once before any flow starts, so a wrong layer name, a cut that a skip
    connection bypasses, a head that is not piecewise linear, G∘ψ that does not reproduce the model, or
    weights that do not load (a pickle carrying code, missing or unexpected keys, wrong shapes, no cached
    pretrained file) are reported at once, not from inside a task. Returns how the weights were found."""
    from repint.tasks.common import build_split

    return build_split(model)[1]


def model_section(cfg: Config, checkpoint: str | None = None) -> tuple[dict[str, Any], ImageSource, ImageSource, str]:
    """The run spec's ``model`` section without its layer (``None``), the data sources and the data set's name."""
    channels = input_channels(cfg)
    mean, std = normalisation(cfg, channels)
    ref, uns, name = data_sources(cfg, channels)
    weights = None
    if cfg.model.weights and not (checkpoint or cfg.model.checkpoint):
        from repint.checkpoints import pretrained_weights

        weights = pretrained_weights(cfg.model.architecture, cfg.model.weights)
        preset = weights.transforms()  # the statistics the weights were trained with, unless the config sets them
        if "mean" not in cfg.data.model_fields_set:
            mean = [float(v) for v in preset.mean]
        if "std" not in cfg.data.model_fields_set:
            std = [float(v) for v in preset.std]
    n_classes = cfg.model.num_classes or (len(weights.meta["categories"]) if weights else len(ref.class_names))
    if n_classes < 2:
        if len(ref.class_names) == 1:
            raise ValueError(f"data.reference has a single class ({ref.class_names[0]!r}): RI explains a classifier "
                             "of at least two classes (the boundaries lie between classes). Add the other classes' "
                             "folders, or set model.num_classes to the model's number of outputs.")
        raise ValueError("The reference data has no labels to count classes from: set model.num_classes.")
    ckpt = checkpoint or cfg.model.checkpoint
    if ckpt and not Path(ckpt).is_file():
        raise FileNotFoundError(f"model.checkpoint {ckpt} does not exist. Train one with `repint train CONFIG`.")
    model: dict[str, Any] = {
        "architecture": cfg.model.architecture, "checkpoint": ckpt, "num_classes": n_classes,
        "image_size": cfg.data.image_size, "layer": None, "mean": mean, "std": std,
        "allow_nonlinear_head": cfg.model.allow_nonlinear_head,
        "checkpoint_sha256": file_sha256(ckpt) if ckpt else None,
    }
    if weights is not None:
        model["weights"] = str(weights)
    return model, ref, uns, name


def build_spec(cfg: Config, out_dir: str | Path, checkpoint: str | None = None) -> RunSpec:
    """A :class:`RunSpec` for ``cfg``; ``checkpoint`` overrides ``cfg.model.checkpoint``."""
    model, ref, uns, name = model_section(cfg, checkpoint)
    layer = cfg.model.layer or default_layer(cfg.model.architecture, model["num_classes"], cfg.data.image_size)
    if layer is None:
        raise ValueError(f"model.layer is required for architecture {cfg.model.architecture!r}: name the layer "
                         "whose output is psi, or write `layer: auto` for the one `repint layers CONFIG` recommends.")
    model["layer"] = layer
    if layer == "auto":
        model.update(auto_layer(model, ref))
    model.update(validate_model(model))
    if model.get("weights_file"):
        from repint.checkpoints import cached_weights_file, pretrained_weights

        weights = pretrained_weights(model["architecture"], model["weights"])
        model["checkpoint_sha256"] = file_sha256(str(cached_weights_file(weights)))
    out = Path(out_dir).resolve()
    return RunSpec(
        store=cfg.store or str(out / "store.zarr"), storage_options=cfg.storage_options, out_dir=str(out),
        dataset=name, reference=ref.spec(), unseen=uns.spec(), model=model,
        train=cfg.train.model_copy(), interpretation=cfg.interpretation.model_copy(),
        evaluation=cfg.evaluation.model_copy(deep=True), runtime=cfg.runtime.model_copy(),
    )


def layer_inputs(model: dict[str, Any], ref: ImageSource, n: int = AUTO_LAYER_IMAGES) -> tuple[Any, Any]:
    """The model of a run spec's ``model`` section in its normalisation wrapper, and ``n`` reference images
    spread over the set: what `repint layers` and ``layer: auto`` analyse."""
    import numpy as np

    from repint.model import Classifier
    from repint.nets import load_network

    net, _ = load_network(model)
    step = max(1, len(ref) // n)
    return Classifier(net, tuple(model["mean"]), tuple(model["std"])).eval(), ref.load(np.arange(0, len(ref), step)[:n])


def auto_layer(model: dict[str, Any], ref: ImageSource) -> dict[str, Any]:
    """``layer: auto``: the layer :func:`repint.layers.recommend` picks on a few reference images, recorded
    as ``layer`` with ``layer_choice: auto``."""
    from repint.layers import LayerChoiceError, recommend

    try:
        report = recommend(*layer_inputs(model, ref))
    except LayerChoiceError as exc:
        raise ValueError(f"model.layer: auto: {exc}") from None
    return {"layer": report.name, "layer_choice": "auto"}
