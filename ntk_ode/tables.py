"""Former home of the certified interpolants; they live in :mod:`ntk_ode.kernels.interpolants` now.

Every name imported from here before keeps working (``from ntk_ode.tables import lobatto``).
"""

from .kernels.interpolants import (
    CoefficientKernel,
    Evaluate,
    NormAngleKernel,
    build_norm_angle,
    chebyshev_coefficients,
    clenshaw,
    cosine_to_u,
    cosines,
    lobatto,
    pair_inputs,
)

__all__ = [
    "CoefficientKernel",
    "Evaluate",
    "NormAngleKernel",
    "build_norm_angle",
    "chebyshev_coefficients",
    "clenshaw",
    "cosine_to_u",
    "cosines",
    "lobatto",
    "pair_inputs",
]
