r"""Grad-CAM++ (Chattopadhyay et al. 2018): with gradients :math:`g = ∂y_c/∂A` at the input image,

.. math:: a^{k}_{ij} = \frac{g_{ij}^2}{2 g_{ij}^2 + \sum_{ab} A^k_{ab}\, g_{ij}^3}, \qquad
          α_k = \sum_{ij} a^k_{ij}\, \mathrm{ReLU}(g_{ij})

computed with the ``grad-cam`` package and reused on other images."""

from __future__ import annotations

from pytorch_grad_cam import GradCAMPlusPlus as _GradCAMPlusPlus

from repint.methods.base import register
from repint.methods.gradcam import LibraryCAM


@register
class GradCAMPlusPlus(LibraryCAM):
    name, paper_order, cam_class = "Grad-CAM++", 2, _GradCAMPlusPlus
