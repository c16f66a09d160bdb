"""The public face of the engine: :func:`kernel_fn` and :func:`norm_angle_kernel`.

``kernel_fn`` validates, picks a strategy (:func:`ntk_ode.kernels.strategy.choose`) and calls it;
the strategies, the adaptivity and the one core live in the modules beside this one.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import gaussian
from .._checks import check_depth, check_inputs, default_rtol, positive_int
from .duals import Duals, check_duals
from .gets import parse_get, select
from .interpolants import NormAngleKernel
from .problem import Problem
from .strategy import choose, direct_result, norm_angle_tables, table_kernels

__all__ = ["kernel_fn", "norm_angle_kernel"]

_FLOAT32_NOTED: list[bool] = []  # the float32 note is logged once per process


def _note_float32():
    """One warning per process that float32 kernels aim at 1e-5, not the 1e-8 of float64."""
    if not _FLOAT32_NOTED:
        _FLOAT32_NOTED.append(True)
        logging.getLogger("ntk_ode").warning(
            "ntk_ode: 64-bit floats are off, so kernels are computed in float32 to rtol 1e-5 (about 1e-5 "
            "relative accuracy, not the 1e-8 of float64); jax.config.update('jax_enable_x64', True) before "
            "any computation gives float64"
        )


def _check_x(x, name, d=None):
    if isinstance(x, jax.core.Tracer):
        raise ValueError(f"{name}: kernel_fn evaluates eagerly; call it outside jit")
    return check_inputs(x, d, name, expected_by="x1 has")


def _check_solve_options(nodes, terms, rtol):
    if nodes is not None and (isinstance(nodes, bool) or int(nodes) != nodes or nodes < 2):
        raise ValueError(f"nodes must be an integer >= 2, got {nodes!r}")
    if isinstance(terms, bool) or int(terms) != terms or terms < 8:
        raise ValueError(f"terms must be an integer >= 8, got {terms!r}")
    if rtol is not None and (isinstance(rtol, bool) or not (0 < float(rtol) < 1)):
        raise ValueError(f"rtol must be a number in (0, 1), got {rtol!r}")


def kernel_fn(
    model: Any,
    depth: int | None = None,
    *,
    rtol: float | None = None,
    nodes: int | None = None,
    block_size: int = 256,
    terms: int = gaussian.DEFAULT_TERMS,
    equal_norm: str | bool = "auto",
    table: str | bool = "auto",
    shard: bool = True,
    progress: bool = False,
) -> Callable[..., Any]:
    """The infinite-width kernels of ``model`` (``depth=None``: Neural ODE; ``depth=L``: ResNet).

    Returns ``kfn(x1, x2=None, get=("nngp", "ntk"), with_error=False)`` in the neural-tangents
    convention: ``get`` a string returns that (N1, N2) array, a tuple returns a namedtuple of
    exactly those fields in that order (:func:`ntk_ode.kernels.gets.kernel_type`), which unpacks.
    Besides "nngp" and "ntk", the NTK's blocks "ntk_U", "ntk_W", "ntk_v" can be asked for;
    ``get=None`` returns all five (:class:`ntk_ode.kernels.gets.Kernel`), as neural-tangents does.
    ``with_error=True`` also returns the estimated maximum absolute errors in the same form: time
    grid (0 for the exact ``depth=L`` recursions), certified dual errors, table interpolation,
    rounding (docs/theory.md, "Error estimates of kernel_fn"); with ``nodes`` fixed the time-grid
    part is unknown and the estimate is nan. When the estimate exceeds ``rtol`` a RuntimeWarning
    says so. Evaluates eagerly (adaptive choices on the host): not for use under ``jax.jit``.

    Args:
        model: the Neural ODE.
        depth: None for the ODE, L for the weight-tied ResNet.
        rtol: target relative accuracy for ``depth=None`` (default 1e-8 in float64, 1e-5 in
            float32); drives the adaptive number of Chebyshev nodes and the equal-norm table.
        nodes: fix the number of Chebyshev intervals M instead (no adaptivity).
        block_size: input pairs solved at once (memory ~ block_size * M^2).
        terms: Mehler terms for activations without closed-form duals.
        equal_norm: "auto" uses the zonal fast path when every input has the same norm; False
            never; True requires it.
        table: for inputs of several norms, "auto" uses the certified (norm, norm, angle)
            interpolant (:func:`norm_angle_kernel`, docs/theory.md section 14) above
            ``TABLE_MIN_PAIRS`` pairs, falling back to direct solves if it cannot meet rtol;
            True always uses it (and raises if it cannot); False never.
        shard: spread pair blocks over all local devices.
        progress: show a progress bar over pair blocks (also those of the table's solves).

    Returns:
        ``kfn(x1, x2=None, get=("nngp", "ntk"), with_error=False)``.

    Raises:
        ValueError: bad options (here) or inputs (from ``kfn``).
        RuntimeError: ``equal_norm=True`` or ``table=True`` and the table cannot meet rtol.

    Warns:
        RuntimeWarning: the error estimate exceeds ``rtol``.
    """
    depth = check_depth(depth)
    if equal_norm not in ("auto", True, False):
        raise ValueError(f"equal_norm must be 'auto', True or False, got {equal_norm!r}")
    if table not in ("auto", True, False):
        raise ValueError(f"table must be 'auto', True or False, got {table!r}")
    _check_solve_options(nodes, terms, rtol)
    block_size = positive_int("block_size", block_size)
    duals0 = Duals(model.activation, int(terms))

    def kfn(x1, x2=None, get=("nngp", "ntk"), with_error=False):
        names, single = parse_get(get)
        x1 = _check_x(x1, "x1")
        symmetric = x2 is None
        x2c = x1 if symmetric else _check_x(x2, "x2", x1.shape[1])
        eps = float(jnp.finfo(x1.dtype).eps)
        tol = rtol if rtol is not None else default_rtol(x1.dtype)
        if rtol is None and eps > 1e-10:
            _note_float32()
        check_duals(model.activation)
        problem = Problem(model, duals0, x1, x2c, symmetric, want_ntk=names != ("nngp",))
        norms = np.linalg.norm(np.asarray(problem.X), axis=1)
        plan = choose(
            norms, problem.i1.size, depth=depth, nodes=nodes, activation=model.activation,
            equal_norm=equal_norm, table=table,
        )  # fmt: skip
        for k, how in enumerate(plan):
            last = k == len(plan) - 1
            try:
                if how == "table":
                    r = table_kernels(
                        model, x1, x2c, names, depth=depth, tol=tol, nodes=nodes, terms=terms, progress=progress
                    )
                else:
                    zonal = (True if equal_norm is True else "auto") if how == "zonal" else False
                    options = dict(depth=depth, nodes=nodes, zonal=zonal, block_size=block_size, shard=shard)
                    r = direct_result(model, duals0, problem, names, tol=tol, progress=progress, **options)
                break
            except RuntimeError:
                if last or how != "table":
                    raise
        if r.unmet is not None:
            warnings.warn(r.unmet, RuntimeWarning, stacklevel=2)
        k, e = select(r.values, names, single), select(r.errors, names, single)
        return (k, e) if with_error else k

    return kfn


def norm_angle_kernel(
    model: Any,
    d: int,
    rmin: float,
    rmax: float,
    *,
    depth: int | None = None,
    get: str | tuple = ("nngp", "ntk"),
    rtol: float = 1e-10,
    nodes: int | None = None,
    terms: int = gaussian.DEFAULT_TERMS,
    progress: bool = False,
) -> NormAngleKernel | list[NormAngleKernel]:
    """The kernels of inputs with norms in [rmin, rmax] as certified functions of
    (|x|, |x'|, cos) (docs/theory.md section 14): :func:`ntk_ode.kernels.interpolants.build_norm_angle`
    over direct solves (no table inside), one :class:`NormAngleKernel` per name.

    Args:
        model: the Neural ODE.
        d: input dimension.
        rmin: smallest input norm (> 0).
        rmax: largest input norm.
        depth: None for the ODE, L for the ResNet.
        get: a kernel name or a tuple of names (from ``GETS``).
        rtol: target accuracy relative to each kernel's largest value.
        nodes: fixed Chebyshev intervals of the direct solves (None: adaptive).
        terms: Mehler terms of the direct solves.
        progress: progress bars over the pair blocks of each table's solves.

    Returns:
        A :class:`NormAngleKernel` (``get`` a string) or a list of them.

    Raises:
        ValueError: bad arguments.
        RuntimeError: the table cannot meet rtol.
    """
    names, single = parse_get(get)
    if isinstance(d, bool) or int(d) != d or d < 2:
        raise ValueError(f"d must be an integer >= 2, got {d!r}")
    depth = check_depth(depth)
    _check_solve_options(nodes, terms, rtol)
    check_duals(model.activation)
    out = norm_angle_tables(
        model, int(d), float(rmin), float(rmax), names, depth=depth, rtol=rtol, nodes=nodes, terms=terms,
        progress=progress,
    )  # fmt: skip
    return out[0] if single else out
