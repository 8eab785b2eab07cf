"""The interface every interpretation method implements, and the registry that selects them by name.

A method turns one interpretation (a centre: its input image, its features, its polytope) into a
reusable *interpretation* (e.g. channel weights), then applies it to unseen images as keep-masks.
CAM-style methods override only :meth:`CAMMethod.channel_weights`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from torch import nn

from repint.heatmaps import cam_maps
from repint.metrics import keep_top_fraction

__all__ = ["CAMMethod", "InterpretationInput", "Method", "available_methods", "get_method", "parse_variant", "register",
           "variant_name"]


@dataclass
class InterpretationInput:
    """What a method may use to build the interpretation of one centre.

    ``boundaries_W``/``boundaries_b`` are the polytope's boundaries (RI only, ``None`` otherwise).
    """

    model: nn.Module
    layer: str
    image: np.ndarray
    features: np.ndarray
    predicted_class: int
    boundaries_W: np.ndarray | None = None
    boundaries_b: np.ndarray | None = None
    orient: bool = True
    cluster_images: np.ndarray | None = None
    random_images: np.ndarray | None = None


class Method(ABC):
    """One interpretation method, registered by :attr:`name`."""

    name: ClassVar[str]
    version: ClassVar[int] = 1  # part of the stored interpretations' fingerprint: bump when results change
    needs_cluster: ClassVar[bool] = False  # interpret() needs the cluster's images (ACE)
    uses_polytope: ClassVar[bool] = False  # interpret() needs P(x); reused on the images P(x) covers (RI)
    model: nn.Module | None = None
    layer: str = ""

    def bind(self, model: nn.Module, layer: str) -> Method:
        """The model and ψ layer, for methods that run the model when reusing an interpretation."""
        self.model, self.layer = model, layer
        return self

    @abstractmethod
    def interpret(self, inp: InterpretationInput) -> dict[str, np.ndarray]:
        """The reusable interpretation of one centre (arrays, stored as they are)."""

    @abstractmethod
    def heatmaps(self, interpretation: dict[str, np.ndarray], images: np.ndarray,
                 features: np.ndarray) -> np.ndarray:
        """Heat maps ``[n, H, W]`` in ``[0, 1]`` of the interpretation reused on other images."""

    def keep_masks(self, interpretation: dict[str, np.ndarray], images: np.ndarray, features: np.ndarray,
                   fraction: float = 0.2) -> np.ndarray:
        """Boolean ``[n, H, W]`` masks of the pixels kept for the AD/AI evaluation."""
        return keep_top_fraction(self.heatmaps(interpretation, images, features), fraction)


class CAMMethod(Method):
    """A method whose interpretation is channel weights ``α`` ``[P, K]`` reused on every image."""

    @abstractmethod
    def channel_weights(self, inp: InterpretationInput) -> np.ndarray:
        """``α`` ``[P, K]`` (``P = 1`` for single-map methods)."""

    def interpret(self, inp: InterpretationInput) -> dict[str, np.ndarray]:
        return {"channel_weights": np.atleast_2d(self.channel_weights(inp)).astype(np.float32)}

    def heatmaps(self, interpretation: dict[str, np.ndarray], images: np.ndarray,
                 features: np.ndarray) -> np.ndarray:
        return cam_maps(interpretation["channel_weights"], features, size=images.shape[-2:])


_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    return list(_REGISTRY)


def _value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(low)
    except ValueError:
        return text.strip()


def parse_variant(name: str) -> tuple[str, dict[str, Any]]:
    """``"RI[orient=false,q=100]"`` -> ``("RI", {"orient": False, "q": 100})``; a plain name has no overrides.

    A variant is a registered method run with other ``interpretation`` settings (method.md's variants),
    reported under its own name beside the method.
    """
    if not name.endswith("]") or "[" not in name:
        return name, {}
    base, _, inner = name[:-1].partition("[")
    overrides = {}
    for part in filter(None, inner.split(",")):
        key, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"Method variant {name!r}: expected key=value inside [...], got {part!r}.")
        overrides[key.strip()] = _value(value)
    return base, overrides


def variant_name(base: str, overrides: dict[str, Any]) -> str:
    """The inverse of :func:`parse_variant`: ``("RI", {"orient": False})`` -> ``"RI[orient=false]"``."""
    if not overrides:
        return base
    text = ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in overrides.items())
    return f"{base}[{text}]"


def get_method(name: str) -> Method:
    """A fresh instance of the registered method ``name`` (a variant name gives its base method)."""
    base, _ = parse_variant(name)
    try:
        return _REGISTRY[base]()
    except KeyError:
        raise ValueError(f"Unknown method {base!r}; available: {', '.join(_REGISTRY)}.") from None
