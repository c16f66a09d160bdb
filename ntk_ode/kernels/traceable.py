"""Differentiable infinite-width kernels: the engine's traced core on a fixed grid, as a pure JAX
function of the hyperparameters (docs/theory.md section 11).

:func:`traceable_kernel_fn` evaluates the same equations as :func:`ntk_ode.kernel_fn` on a
*fixed* time grid and Mehler order, as a pure JAX function of the hyperparameters
``{"sigma_w", "sigma_u", "sigma_v", "T"}``: it runs under ``jax.jit`` and ``jax.vmap`` and has
exact derivatives of the grid equations in both modes. Forward mode (``jax.jvp``,
``jax.jacfwd``) differentiates through the Picard iterations; for reverse mode (``jax.grad``) a
custom JVP returns the forward-mode Jacobian over the four hyperparameters times their tangents,
which is linear and so transposable: a gradient costs about five kernel evaluations. Derivatives
with respect to the *inputs* are not provided (they come back as NaN, so a mistaken use is loud).

``with_error=True`` also returns, traced, the estimated max abs errors of the fixed grid and
order: the change from a coarser grid and the Parseval bound of the Mehler duals at every node
variance times the measured response to a dual perturbation (two more solves). A fit can so
check the kernel it optimised (:func:`ntk_ode.hyper.fit_hyperparameters` does).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._checks import check_depth, check_inputs, eager_errors, fail_if, is_traced
from .core import traced_pairs, traced_singles
from .duals import Duals, mehler_bound
from .gets import GETS, parse_get, select
from .grids import chebyshev_grid, resnet_grid

__all__ = ["HYPERPARAMETERS", "check_hyper", "coarse_nodes", "traceable_kernel_fn"]

HYPERPARAMETERS = ("sigma_w", "sigma_u", "sigma_v", "T")


def check_hyper(hyper: Any) -> dict:
    """Validate the hyperparameters of a traceable kernel.

    Args:
        hyper: a dict with exactly the keys ``HYPERPARAMETERS`` and scalar values.

    Returns:
        The dict with JAX scalars of the default float dtype.

    Raises:
        ValueError: other keys, non-scalar values, or (eagerly) values that are not finite and
            positive.
    """
    if not isinstance(hyper, dict) or sorted(hyper) != sorted(HYPERPARAMETERS):
        got = sorted(hyper) if isinstance(hyper, dict) else type(hyper).__name__
        raise ValueError(f"hyper must be a dict with exactly the keys {HYPERPARAMETERS}, got {got}")
    out = {k: jnp.asarray(v, jnp.result_type(float)) for k, v in hyper.items()}
    bad = [k for k, v in out.items() if v.shape != ()]
    if bad:
        raise ValueError(f"hyper: {bad} must be scalars (vmap over a batch of hyperparameters instead)")
    if not is_traced(out):
        bad = [k for k, v in out.items() if not (bool(jnp.isfinite(v)) and float(v) > 0)]
        if bad:
            raise ValueError(f"hyper: {bad} must be finite and > 0, got {[float(out[k]) for k in bad]}")
    return out


@dataclasses.dataclass(frozen=True)
class _Static:
    """Everything of a traceable kernel that is not a hyperparameter (hashable)."""

    duals: Duals
    depth: int | None
    nodes: int
    head: str
    input_scaling: str
    row_batch: int
    on_failure: str = "raise"


def _kernels(static: _Static, hyper: dict, x1, x2):
    """All five kernels (nngp, ntk, ntk_U, ntk_W, ntk_v), each (N1, N2), and the flags: the
    engine's traced core (:func:`ntk_ode.kernels.core.traced_singles`, ``traced_pairs``) on a
    fixed grid, row by row."""
    dt = x1.dtype
    unit = resnet_grid(static.depth, 1.0) if static.depth is not None else chebyshev_grid(static.nodes, 1.0)
    sw, su, sv, T = (hyper[k].astype(dt) for k in ("sigma_w", "sigma_u", "sigma_v", "T"))
    scale2 = su**2 / x1.shape[1] if static.input_scaling == "sqrt_d" else su**2
    duals = static.duals
    v1, tab1, ok1, _ = traced_singles(duals, unit, sw, T, scale2 * jnp.sum(x1 * x1, axis=1))
    v2, tab2, ok2, _ = traced_singles(duals, unit, sw, T, scale2 * jnp.sum(x2 * x2, axis=1))
    s12 = scale2 * (x1 @ x2.T)

    def row(args):
        s_row, va, ta = args
        return traced_pairs(duals, unit, static.head, True, (sw, sv, T), s_row, va, v2, ta, tab2, row=True)

    nngp, ntk, blocks, ok = jax.lax.map(row, (s12, v1, tab1), batch_size=static.row_batch)
    kernels = (nngp, ntk, blocks[..., 0], blocks[..., 1], blocks[..., 2])
    return kernels, jnp.all(ok) & jnp.all(ok1) & jnp.all(ok2), (v1, v2)


def _checked_kernels(static: _Static, hyper: dict, x1, x2):
    kernels, ok, _ = _kernels(static, hyper, x1, x2)
    if static.on_failure == "nan":  # for line searches: a failed solve is outside the domain
        return tuple(jnp.where(ok, k, jnp.nan) for k in kernels)
    kernels = fail_if(
        kernels,
        ~ok,
        "traceable kernel: the Picard iteration did not converge (sigma_w T too large for this grid?)",
    )
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(k)) for k in kernels]))
    return fail_if(kernels, ~finite, "traceable kernel: non-finite kernel values", FloatingPointError)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _kernels_ad(static: _Static, hyper: dict, x1, x2):
    return _checked_kernels(static, hyper, x1, x2)


@functools.partial(_kernels_ad.defjvp, symbolic_zeros=True)
def _kernels_jvp(static, primals, tangents):
    # The tangent is the forward-mode Jacobian over the (four) hyperparameters, computed from
    # the primals, times the hyperparameters' tangents: linear in the tangents, so reverse mode
    # (which transposes it) works although the Picard while-loops cannot be transposed.
    hyper, x1, x2 = primals
    dh, dx1, dx2 = tangents
    f = lambda h: _checked_kernels(static, h, x1, x2)
    both = lambda h: (lambda o: (o, o))(f(h))  # one solve gives the Jacobian's primal and aux
    jac, out = jax.jacfwd(both, has_aux=True)(hyper)
    zero = lambda t: isinstance(t, jax.custom_derivatives.SymbolicZero)
    dout = []
    for o, j in zip(out, jac):
        t = jnp.zeros_like(o)
        for k in hyper:
            if not zero(dh[k]):
                t = t + j[k] * dh[k]
        for dx in (dx1, dx2):  # input derivatives are not provided: loud (NaN), never zero
            if not zero(dx):
                t = t + jnp.nan * jnp.sum(dx)
        dout.append(t)
    return out, tuple(dout)


_kernels_jit = jax.jit(_kernels_ad, static_argnums=0)


def coarse_nodes(nodes: int) -> int:
    """The coarser grid of the time-grid estimate: about two thirds of ``nodes`` (at least 2).

    Args:
        nodes: Chebyshev intervals of the grid.

    Returns:
        The coarser count.
    """
    return max(2, (2 * int(nodes)) // 3)


def _errors(static: _Static, hyper: dict, x1, x2, kernels):
    """Estimated max abs errors of the five kernels (docs/theory.md section 11): the time grid
    (4x the change from ``coarse_nodes``: bounds convergence of any order >= 1 at these rungs;
    0 for the exact ResNet recursion), the duals (4x the Parseval bound at every node variance
    times the measured response to a relative dual perturbation), and rounding."""
    dt = x1.dtype
    eps = float(jnp.finfo(dt).eps)
    err = [64 * eps * jnp.max(jnp.abs(k)) for k in kernels]
    if static.depth is None:
        coarse, _, _ = _kernels(dataclasses.replace(static, nodes=coarse_nodes(static.nodes)), hyper, x1, x2)
        err = [e + 4.0 * jnp.max(jnp.abs(k - c)) for e, k, c in zip(err, kernels, coarse)]
    duals = static.duals
    if not duals.closed:
        eta = max(1e-6, 1e3 * eps)
        up, _, (v1, v2) = _kernels(
            dataclasses.replace(static, duals=dataclasses.replace(duals, perturb=eta)), hyper, x1, x2
        )
        delta = jnp.maximum(mehler_bound(duals, v1), mehler_bound(duals, v2))
        err = [e + 4.0 * delta * jnp.max(jnp.abs(u - k)) / eta for e, k, u in zip(err, kernels, up)]
    return tuple(jax.lax.stop_gradient(e) for e in err)


@functools.partial(jax.jit, static_argnums=0)
def _kernels_and_errors(static: _Static, hyper: dict, x1, x2):
    kernels = _kernels_ad(static, hyper, x1, x2)
    return kernels, _errors(static, hyper, x1, x2, jax.lax.stop_gradient(kernels))


def traceable_kernel_fn(
    model: Any,
    depth: int | None = None,
    *,
    nodes: int = 24,
    terms: int = 64,
    row_batch: int = 8,
    on_failure: str = "raise",
) -> Callable:
    """Infinite-width kernels as a pure, differentiable JAX function of the hyperparameters.

    ``kfn(hyper, x1, x2=None, get=("nngp", "ntk"), with_error=False)`` with ``hyper`` a dict of
    the four scalars ``HYPERPARAMETERS`` (:func:`ntk_ode.hyper.hyperparameters` gives the
    model's) returns what :func:`ntk_ode.kernel_fn` returns for
    ``with_hyperparameters(model, hyper)``, but on a fixed
    grid: ``nodes`` Chebyshev intervals for the ODE (``depth=None``), or the exact ResNet
    recursion (``depth=L``), and ``terms`` Mehler terms for activations without closed-form
    duals. It works under ``jax.jit`` and ``jax.vmap`` (over hyperparameters), and is
    differentiable in ``hyper`` by ``jax.jvp``/``jax.jacfwd`` and by ``jax.grad`` (a custom JVP;
    docs/theory.md section 11). Derivatives in ``x1``, ``x2`` come back as NaN.

    The grid is not adapted: ``with_error=True`` returns the estimated max abs errors too
    (traced; the kernels' form), at the cost of two more solves, so the values can be checked at
    the hyperparameters of interest (kinked activations converge only algebraically in
    ``nodes``; their ResNet kernels ``depth=L`` are exact).

    Args:
        model: supplies the activation, head and input scaling (its sigma's and T are the
            defaults only through :func:`ntk_ode.hyper.hyperparameters`).
        depth: None for the Neural ODE, L for the weight-tied ResNet.
        nodes: Chebyshev intervals of the ODE's time grid (>= 2).
        terms: Mehler terms (>= 8; ignored for closed-form duals).
        row_batch: rows of the kernel solved at once (memory ~ row_batch * N2 * nodes^2).
        on_failure: ``"raise"`` (a Picard iteration that does not converge, or a non-finite
            value, raises) or ``"nan"`` (the kernels come back as NaN instead: for optimizers
            whose line search treats NaN as outside the domain).

    Returns:
        ``kfn(hyper, x1, x2=None, get=("nngp", "ntk"), with_error=False)``.

    Raises:
        ValueError: bad options (here) or bad arguments (from ``kfn``).
    """
    depth = check_depth(depth)
    for name, val, lo in (("nodes", nodes, 2), ("terms", terms, 8), ("row_batch", row_batch, 1)):
        if isinstance(val, bool) or int(val) != val or val < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {val!r}")
    if on_failure not in ("raise", "nan"):
        raise ValueError(f"on_failure must be 'raise' or 'nan', got {on_failure!r}")
    static = _Static(
        Duals(model.activation, int(terms)), depth, int(nodes), model.head, model.input_scaling, row_batch, on_failure
    )

    def kfn(hyper, x1, x2=None, get=("nngp", "ntk"), with_error=False):
        names, single = parse_get(get)
        hyper = check_hyper(hyper)
        x1 = check_inputs(x1, None, "x1")
        x2 = x1 if x2 is None else check_inputs(x2, x1.shape[1], "x2", expected_by="x1 has")
        with eager_errors():  # called eagerly: a failed check raises its own error, not XLA's
            if not with_error:
                return select(dict(zip(GETS, _kernels_jit(static, hyper, x1, x2))), names, single)
            kernels, errors = _kernels_and_errors(static, hyper, x1, x2)
        return select(dict(zip(GETS, kernels)), names, single), select(dict(zip(GETS, errors)), names, single)

    return kfn
