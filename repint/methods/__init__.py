"""Interpretation methods, registered by name (``evaluation.methods`` in the config selects them)."""

from repint.methods import ace as _ace  # noqa: F401  (registers ACE)
from repint.methods import gradcam as _gradcam  # noqa: F401  (registers Grad-CAM)
from repint.methods import gradcam_exact as _gradcam_exact  # noqa: F401  (registers Grad-CAM-exact)
from repint.methods import gradcampp as _gradcampp  # noqa: F401  (registers Grad-CAM++)
from repint.methods import ri as _ri  # noqa: F401  (registers RI)
from repint.methods import scorecam as _scorecam  # noqa: F401  (registers Score-CAM)
from repint.methods.base import (
    METHODS,
    CAMMethod,
    InterpretationInput,
    Method,
    available_methods,
    get_method,
    paper_methods,
    register,
)

__all__ = ["METHODS", "CAMMethod", "InterpretationInput", "Method", "available_methods", "get_method", "paper_methods",
           "register"]
