"""The interface every interpretation method implements, and the registry that selects them by name.

A method turns one interpretation (a centre: its input image, its features, its polytope) into a
reusable *interpretation* (e.g. channel weights), then applies it to unseen images as keep-masks.
CAM-style methods override only :meth:`CAMMethod.channel_weights`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from torch import nn

from repint.heatmaps import cam_maps
from repint.metrics import KEEP_FRACTION, keep_top_fraction
from repint.registry import Registry

__all__ = ["METHODS", "CAMMethod", "InterpretationInput", "Method", "available_methods", "get_method", "paper_methods",
           "register"]


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
    paper_order: ClassVar[int | None] = None  # its column in the paper's Table 1 (None: not the paper's)
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
                   fraction: float = KEEP_FRACTION) -> np.ndarray:
        """Boolean ``[n, H, W]`` masks of the pixels kept for the AD/AI evaluation."""
        return keep_top_fraction(self.heatmaps(interpretation, images, features), fraction)

    def shown_maps(self, interpretation: dict[str, np.ndarray], images: np.ndarray, features: np.ndarray,
                   fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """What a figure shows of the interpretation on ``images``: its heat maps and keep-masks."""
        maps = self.heatmaps(interpretation, images, features)
        return maps, keep_top_fraction(maps, fraction)

    def reused_maps(self, interpretation: dict[str, np.ndarray], images: np.ndarray, features: np.ndarray,
                    fractions: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """What the evaluation scores: the heat maps ``[n, H, W]`` (their order drives deletion and
        insertion) and the keep-masks ``[F, n, H, W]`` at each kept share, from one computation of the
        maps; each mask is what :meth:`keep_masks` gives at that share."""
        maps = self.heatmaps(interpretation, images, features)
        masks = np.stack([keep_top_fraction(maps, f) for f in fractions]) if len(fractions) else (
            np.zeros((0, *maps.shape), bool))
        return maps, masks


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


METHODS: Registry[type[Method]] = Registry("method")


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    return METHODS.add(cls.name, cls)


def available_methods() -> list[str]:
    """Every registered method, in registration order."""
    return METHODS.names()


def paper_methods() -> list[str]:
    """The methods of the paper's Table 1 (RI and its four baselines), in its order."""
    ranked = [(cls.paper_order, name) for name, cls in METHODS.items() if cls.paper_order is not None]
    return [name for _, name in sorted(ranked)]


def get_method(name: str) -> Method:
    """A fresh instance of the registered method ``name`` (a variant's label gives its base method)."""
    from repint.variants import Variant

    return METHODS.get(Variant.parse(name).base)()
