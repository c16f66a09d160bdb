"""The infinite-width engine: one core behind every infinite-width kernel (docs/theory.md section 3).

Modules, in the order they import each other:

* :mod:`.grids`: Chebyshev and ResNet time grids;
* :mod:`.duals`: certified duals inside the solvers (closed forms, Mehler series, quadrature);
* :mod:`.core`: the Picard solvers of the single-input and pair problems, in device blocks;
* :mod:`.problem`: pair bookkeeping of one call (single-input solutions, probes, assembly);
* :mod:`.adapt`: Mehler terms, Chebyshev nodes, dual sensitivity, Richardson;
* :mod:`.interpolants`: zonal and (norm, norm, angle) interpolants over an evaluation function;
* :mod:`.gets`: kernel names and the parser of ``get``;
* :mod:`.strategy`: the selection rule and the direct, zonal and table strategies;
* :mod:`.untied`: the untied recursion with certified duals;
* :mod:`.traceable`: differentiable kernels (the traced core on a fixed grid) with a traced
  error estimate;
* :mod:`.api`: :func:`kernel_fn` and :func:`norm_angle_kernel`.
"""

from .adapt import richardson
from .api import kernel_fn, norm_angle_kernel
from .core import pair_kernels, single_variances
from .duals import Duals
from .gets import GETS, Kernel, kernel_type, parse_get
from .grids import Grid, chebyshev_grid, resnet_grid
from .interpolants import NormAngleKernel, build_norm_angle
from .strategy import TABLE_MIN_PAIRS
from .traceable import HYPERPARAMETERS, traceable_kernel_fn

__all__ = [
    "GETS",
    "HYPERPARAMETERS",
    "TABLE_MIN_PAIRS",
    "Duals",
    "Grid",
    "Kernel",
    "NormAngleKernel",
    "build_norm_angle",
    "chebyshev_grid",
    "kernel_fn",
    "kernel_type",
    "norm_angle_kernel",
    "pair_kernels",
    "parse_get",
    "resnet_grid",
    "richardson",
    "single_variances",
    "traceable_kernel_fn",
]
