"""RepInt: representative interpretations of CNN image classifiers (Lam et al., ICCV 2021).

The core is plain numpy/torch: arrays in, arrays out. Every name below is imported on first use
(PEP 562), so that ``import repint.x`` and the ``repint`` command start without importing torch and
scikit-learn for modules that do not need them.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    **dict.fromkeys(("Boundaries", "boundary_search", "linear_boundaries", "sample_reference_points"),
                    "repint.boundaries"),
    **dict.fromkeys(("Centres", "assign_nearest", "kmeans_centres"), "repint.centres"),
    **dict.fromkeys(("boundary_channel_weights", "cam_maps"), "repint.heatmaps"),
    **dict.fromkeys(("AverageDropIncrease", "keep_top_fraction", "mask_images"), "repint.metrics"),
    **dict.fromkeys(("AffineHeadWarning", "Classifier", "LayerNotFoundError", "NonPiecewiseLinearError",
                     "split_model"), "repint.model"),
    **dict.fromkeys(("rank_similar", "semantic_distance"), "repint.ranking"),
    **dict.fromkeys(("pack_signs", "sign_bits", "sign_matrix", "unpack_signs"), "repint.signs"),
    **dict.fromkeys(("InfeasibleError", "Polytope", "greedy_polytope"), "repint.solver"),
    # a run's interpretations loaded from its store: the core itself never imports the store's layer
    "Interpretations": "repint.storage.interpretations",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    """The public name ``name``, imported from its module on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'repint' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
