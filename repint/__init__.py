"""RepInt: representative interpretations of CNN image classifiers (Lam et al., ICCV 2021).

The core is plain numpy/torch: arrays in, arrays out.
"""

from repint.boundaries import Boundaries, boundary_search, linear_boundaries, sample_reference_points
from repint.centres import Centres, assign_nearest, kmeans_centres
from repint.heatmaps import boundary_channel_weights, cam_maps
from repint.metrics import AverageDropIncrease, keep_top_fraction, mask_images
from repint.model import (
    AffineHeadWarning,
    Classifier,
    LayerNotFoundError,
    NonPiecewiseLinearError,
    split_model,
)
from repint.ranking import rank_similar, semantic_distance
from repint.signs import pack_signs, sign_bits, sign_matrix, unpack_signs
from repint.solver import InfeasibleError, Polytope, greedy_polytope

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``repint.Interpretations``: a run's interpretations loaded from its store (:mod:`repint.storage`,
    imported on first use so that the core itself never imports the store's layer)."""
    if name == "Interpretations":
        from repint.storage.interpretations import Interpretations

        return Interpretations
    raise AttributeError(f"module 'repint' has no attribute {name!r}")


__all__ = [
    "AffineHeadWarning", "AverageDropIncrease", "Boundaries", "Centres", "Classifier", "InfeasibleError",
    "Interpretations", "LayerNotFoundError", "NonPiecewiseLinearError", "Polytope", "assign_nearest",
    "boundary_channel_weights", "boundary_search", "cam_maps", "greedy_polytope", "keep_top_fraction",
    "kmeans_centres", "linear_boundaries", "mask_images", "pack_signs", "rank_similar", "sample_reference_points",
    "semantic_distance", "sign_bits", "sign_matrix", "split_model", "unpack_signs",
]
