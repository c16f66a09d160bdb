"""Former home of the infinite-width kernels; they live in :mod:`ntk_ode.kernels` now.

Every name imported from here before keeps working (``from ntk_ode.limits import kernel_fn``).
"""

from .kernels import (
    GETS,
    TABLE_MIN_PAIRS,
    Duals,
    Grid,
    Kernel,
    chebyshev_grid,
    kernel_fn,
    kernel_type,
    norm_angle_kernel,
    pair_kernels,
    resnet_grid,
    richardson,
    single_variances,
)

__all__ = [
    "GETS",
    "Kernel",
    "kernel_fn",
    "kernel_type",
    "norm_angle_kernel",
    "TABLE_MIN_PAIRS",
    "Grid",
    "chebyshev_grid",
    "resnet_grid",
    "richardson",
    "Duals",
    "single_variances",
    "pair_kernels",
]
