"""Finite-width NTK of the Neural ODE / weight-tied ResNet, and Monte Carlo kernels.

Methods of :func:`empirical_ntk` (docs/theory.md section 2):

* ``"structured"``: from stored forward states and adjoints,

      Theta = sigma_v^2/n z_T . z'_T + sigma_u^2/d (x.x') (lambda_0 . lambda'_0)
            + sigma_w^2/n sum_q sum_r (mu_q . mu'_r) (phi(h_q) . phi(h'_r)),

  with ``mu_q = w_q lambda_{t_q}``. For ``depth=L``: ``phi`` at layer l-1 against ``lambda`` at
  layer l with ``w = dt`` -- the exact NTK of the ResNet. For ``depth=None``: Gauss-Legendre
  nodes in time (``quad_nodes``), states and adjoints from diffrax solves; accurate to the
  solver tolerance and the quadrature (spectral for smooth activations).
  Cost O(N1 N2 Q^2 n) per call after the solves; memory O((N1 + N2) Q n) for the features
  plus Gram tiles of at most 2^24 entries (the W block is summed over rows in tiles).
* ``"jacobian"``: ``jacrev`` of the outputs, contracted leaf by leaf (never one big Jacobian).
* ``"ntvp"``: NTK-vector products ``J1 (J2^T e_j)`` one column at a time (memory O(params)).

:func:`empirical_ntk_fn` is the generic form for any ``f(params, x)``: like neural-tangents'
``empirical_ntk_fn`` with ``trace_axes=(-1,)``, output axes after the batch axis are summed
over (traced); for scalar outputs it is the plain NTK.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._checks import ArrayOrNumpy, check_depth, check_inputs, fail_if, positive_int
from .batching import tile_starts, tiled
from .gradients import ode_adjoint_states, resnet_adjoint_states
from .model import NeuralODE, Params, Solver, SolverName, check_params, check_solve, hyper_jit

__all__ = [
    "empirical_ntk",
    "empirical_ntk_fn",
    "empirical_nngp",
    "monte_carlo_kernels",
    "structured_blocks",
    "NTK_METHODS",
    "NtkMethod",
    "gauss_legendre",
    "tiled",
]

NtkMethod = Literal["structured", "jacobian", "ntvp"]
NTK_METHODS: tuple[str, ...] = get_args(NtkMethod)


def gauss_legendre(q: int, T: float) -> tuple[np.ndarray, np.ndarray]:
    """The q-point Gauss-Legendre rule on [0, T].

    Args:
        q: number of nodes.
        T: the interval's end.

    Returns:
        ``(nodes, weights)``, each (q,).
    """
    z, w = np.polynomial.legendre.leggauss(int(q))
    return T * (z + 1.0) / 2.0, T * w / 2.0


# ----------------------------------------------------------------------------- structured


def _features(model, params, x, depth, solver, quad_nodes):
    """Per-input features: (z_T (N, n), lambda_0 (N, n), mu (N, Q, n), phi (N, Q, n), ok)."""
    if depth is not None:
        hs, lams = resnet_adjoint_states(model, params, x, depth)  # (L+1, N, n)
        dt = model.T / depth
        mu = dt * jnp.swapaxes(lams[1:], 0, 1)
        ph = model.activation.fn(jnp.swapaxes(hs[:-1], 0, 1))
        return model.head_features(hs[-1]), lams[0], mu, ph, jnp.asarray(True)
    tq, wq = gauss_legendre(quad_nodes, 1.0)  # on [0, 1], scaled by the (traced) T
    ts = model.T * jnp.asarray(np.concatenate([[0.0], tq, [1.0]]), x.dtype)
    hs, lams, ok = ode_adjoint_states(model, params, x, ts, solver)  # (Q+2, N, n)
    mu = (model.T * jnp.asarray(wq, x.dtype))[None, :, None] * jnp.swapaxes(lams[1:-1], 0, 1)
    ph = model.activation.fn(jnp.swapaxes(hs[1:-1], 0, 1))
    return model.head_features(hs[-1]), lams[0], mu, ph, ok


def _structured_blocks(model, x1, x2, f1, f2):
    z1, l1, mu1, p1 = f1
    z2, l2, mu2, p2 = f2
    n = z1.shape[-1]
    kv = (model.sigma_v**2 / n) * z1 @ z2.T
    ku = model.input_scale(x1.shape[1]) ** 2 * (x1 @ x2.T) * (l1 @ l2.T)
    sym = mu2 is mu1 and p2 is p1
    kw = (model.sigma_w**2 / n) * (_w_block_symmetric(mu1, p1) if sym else _w_block(mu1, p1, mu2, p2))
    return ku, kw, kv


_TILE = 2**24  # entries of the (rows, N2, Q, R) Gram tiles held at once (128 MiB in float64)


def _w_block(mu1, p1, mu2, p2):
    """``sum_{q,r} (mu1_iq . mu2_jr)(p1_iq . p2_jr)`` in row tiles: memory O(tile), not O(N1 N2 Q R)."""
    per_row = mu2.shape[0] * mu1.shape[1] * mu2.shape[1]
    rows = max(1, min(mu1.shape[0], _TILE // max(per_row, 1)))

    def row(args):
        m, p = args  # (Q, n) each
        gl = jnp.einsum("qk,jrk->jqr", m, mu2)
        gp = jnp.einsum("qk,jrk->jqr", p, p2)
        return jnp.sum(gl * gp, axis=(1, 2))

    return jax.lax.map(row, (mu1, p1), batch_size=rows)


def _w_block_symmetric(mu, p):
    """:func:`_w_block` of one input set with itself: only the tiles on and above the diagonal
    (about half the work), each ``(b, b, Q, Q)`` with ``b^2 Q^2 <= _TILE``, mirrored."""
    N, Q, _ = mu.shape
    b = max(1, min(N, math.isqrt(_TILE // max(Q * Q, 1))))
    nb = -(-N // b)
    full = _w_block(mu, p, mu, p) if nb == 1 else _upper_tiles(mu, p, b, nb)
    return jnp.triu(full) + jnp.triu(full, 1).T  # exactly symmetric (also within diagonal tiles)


def _upper_tiles(mu, p, b, nb):
    """The (N, N) W block from its ``nb (nb + 1) / 2`` tiles of ``b x b`` on and above the
    diagonal, mirrored below."""
    N, Q, _ = mu.shape
    pad = lambda a: jnp.concatenate([a, jnp.zeros((nb * b - N,) + a.shape[1:], a.dtype)])
    mu, p = pad(mu), pad(p)
    rows, cols = np.asarray(tile_starts(nb, nb, 1, True)).T  # the one tiler, tiles of one row

    def tile(ij):
        i, j = ij
        m1, m2, p1, p2 = (jax.lax.dynamic_slice_in_dim(a, k * b, b) for a, k in ((mu, i), (mu, j), (p, i), (p, j)))
        gram = lambda a1, a2: a1.reshape(b * Q, -1) @ a2.reshape(b * Q, -1).T  # one matrix product
        return jnp.sum((gram(m1, m2) * gram(p1, p2)).reshape(b, Q, b, Q), axis=(1, 3))

    tiles = jax.lax.map(tile, (jnp.asarray(rows), jnp.asarray(cols)))  # (tiles, b, b)
    out = jnp.zeros((nb, nb, b, b), tiles.dtype)
    out = out.at[cols, rows].set(jnp.swapaxes(tiles, 1, 2)).at[rows, cols].set(tiles)
    return jnp.swapaxes(out, 1, 2).reshape(nb * b, nb * b)[:N, :N]


@hyper_jit
def _structured_jit(model, params, x1, x2, depth, solver, quad_nodes):
    return structured_blocks(model, params, x1, x2, depth, solver, quad_nodes)


# ----------------------------------------------------------------------------- generic


def _out_fn(model, depth, solver):
    def f(p, x):
        y, ok = model.forward(p, x, depth, solver)
        return check_solve(y, ok, solver, "empirical_ntk")

    return f


def _jacobian_ntk(f, params, x1, x2):
    j1 = jax.jacrev(f)(params, x1)
    j2 = j1 if x2 is None else jax.jacrev(f)(params, x2)

    def contract(a, b):
        # a: (N1, *out, *p), b: (N2, *out, *p): sum over output (trace) and parameter axes
        a = a.reshape(a.shape[0], -1)
        b = b.reshape(b.shape[0], -1)
        return a @ b.T

    leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(contract, j1, j2))
    return sum(leaves)


def _ntvp_ntk(f, params, x1, x2):
    x2 = x1 if x2 is None else x2
    y2, vjp2 = jax.vjp(lambda p: f(p, x2), params)
    basis = jnp.eye(y2.shape[0], dtype=y2.dtype).reshape((y2.shape[0],) + y2.shape)

    def column(e):
        (tangent,) = vjp2(e)
        _, col = jax.jvp(lambda p: f(p, x1), (params,), (tangent,))
        return col.reshape(col.shape[0], -1).sum(axis=1)

    return jax.lax.map(column, basis).T


def empirical_ntk_fn(
    f: Callable[[Any, Any], Array],
    method: Literal["jacobian", "ntvp"] = "jacobian",
    *,
    trace_axes: tuple = (-1,),
    vmap_axes: Any = None,
) -> Callable[..., Array]:
    """``ntk(x1, x2, params)`` for any ``f(params, x) -> (N, ...)``.

    Output axes after the batch axis are traced (summed), as neural-tangents does with
    ``trace_axes=(-1,)``; ``x2=None`` means ``x2 = x1``. The result is jitted; a non-finite
    kernel raises FloatingPointError (eagerly) or RuntimeError (under an outer jit).

    Args:
        f: the network, ``f(params, x)``.
        method: "jacobian" (jacrev, contracted leaf by leaf) or "ntvp" (NTK-vector products).
        trace_axes: accepted for neural-tangents code: only the default (every output axis
            after the batch axis traced: ``(-1,)`` for (N, k) outputs) is supported.
        vmap_axes: accepted for neural-tangents code: only None is supported.

    Returns:
        ``ntk(x1, x2, params) -> (N1, N2)``.

    Raises:
        ValueError: an unknown method, or ``trace_axes`` / ``vmap_axes`` other than the
            supported ones.
    """
    if method not in ("jacobian", "ntvp"):
        raise ValueError(f"method must be 'jacobian' or 'ntvp', got {method!r}")
    if tuple(trace_axes) != (-1,) or vmap_axes is not None:
        raise ValueError(
            f"empirical_ntk_fn traces every output axis after the batch axis (neural-tangents' "
            f"trace_axes=(-1,) for (N, k) outputs) and does not take vmap_axes; got trace_axes={trace_axes!r}, "
            f"vmap_axes={vmap_axes!r}"
        )
    impl = _jacobian_ntk if method == "jacobian" else _ntvp_ntk

    @jax.jit
    def _ntk(x1, x2, params):
        return impl(f, params, x1, x2)

    def ntk(x1, x2, params):
        K = _ntk(x1, x2, params)
        return fail_if(
            K,
            jnp.logical_not(jnp.all(jnp.isfinite(K))),
            "empirical_ntk_fn: the kernel is not finite (the network's outputs or gradients overflowed)",
            FloatingPointError,
        )

    return ntk


@hyper_jit
def _generic_jit(model, params, x1, x2, depth, solver, method):
    impl = _jacobian_ntk if method == "jacobian" else _ntvp_ntk
    return impl(_out_fn(model, depth, solver), params, x1, x2)


# ----------------------------------------------------------------------------- public


def empirical_ntk(
    model: NeuralODE,
    params: Params,
    x1: Float[ArrayOrNumpy, "N1 d"],
    x2: Float[ArrayOrNumpy, "N2 d"] | None = None,
    depth: int | None = None,
    method: NtkMethod = "structured",
    solver: Solver | SolverName | None = None,
    *,
    quad_nodes: int = 32,
    blocks: bool = False,
    steps: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int | None = None,
    batch_size: int | None = None,
) -> Float[Array, "N1 N2"] | tuple[Array, Array, Array]:
    """The finite-width NTK ``Theta(x1, x2) = J(x1) J(x2)^T``.

    Pure JAX: works under ``jax.jit`` and ``jax.vmap`` over parameters; its checks survive.

    Args:
        model: the model.
        params: the parameters.
        x1: inputs (N1, d).
        x2: inputs (N2, d); None uses ``x1`` (and computes its features once).
        depth: None (the ODE) or L (the tied ResNet; exact).
        method: "structured" (states and adjoints, see the module docstring), "jacobian" or
            "ntvp".
        solver: as in :meth:`NeuralODE.apply`.
        quad_nodes: Gauss-Legendre nodes in time (``depth=None``, ``method="structured"``).
        blocks: return ``(Theta_U, Theta_W, Theta_v)`` (structured only), summing to Theta.
        steps: override the solver's number of fixed steps.
        rtol: override the solver's relative tolerance.
        atol: override the solver's absolute tolerance.
        max_steps: override the solver's step budget.
        batch_size: compute Theta in tiles of ``batch_size`` x ``batch_size`` inputs (as
            neural-tangents' ``batch``): memory per tile instead of for all pairs, one compiled
            tile shape (the last tiles are padded), and for ``x2=None`` only the tiles on and
            above the diagonal. Eagerly the tiles are assembled in host memory. With an
            adaptive solver the steps are chosen per tile, so tiled and untiled results agree to
            the solver's tolerance (exactly with fixed steps or ``depth=L``).

    Returns:
        Theta (N1, N2), or its three blocks.

    Raises:
        ValueError: bad shapes or options.
        RuntimeError: a solve failed.
        FloatingPointError: a non-finite kernel (the dynamics blew up).
    """
    if method not in NTK_METHODS:
        raise ValueError(f"method must be one of {NTK_METHODS}, got {method!r}")
    n, d = check_params(params)
    x1 = check_inputs(x1, d, "x1")
    x2 = None if x2 is None else check_inputs(x2, d, "x2")
    depth = check_depth(depth)
    quad_nodes = positive_int("quad_nodes", quad_nodes)
    solver = Solver.make(solver, steps=steps, rtol=rtol, atol=atol, max_steps=max_steps)
    if batch_size is not None:
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        kw = dict(depth=depth, method=method, solver=solver, quad_nodes=quad_nodes, blocks=True)
        if method != "structured":
            kw["blocks"] = False
        tile = lambda a, b: empirical_ntk(model, params, a, b, **kw)  # type: ignore[arg-type]
        out = tiled(tile, x1, x2, int(batch_size))
        if method != "structured":
            return out[0]
        return out if blocks else out[0] + out[1] + out[2]
    if method == "structured":
        bl, ok = _structured_jit(model, params, x1, x2, depth, solver, int(quad_nodes))
        bl = check_solve(bl, ok, solver, "empirical_ntk")
        return bl if blocks else bl[0] + bl[1] + bl[2]
    if blocks:
        raise ValueError("blocks=True needs method='structured'")
    if method == "ntvp" and depth is None:
        solver = dataclasses.replace(solver, forward_mode=True)  # jvp through the solve
    K = _generic_jit(model, params, x1, x2, depth, solver, method)
    return check_solve(K, True, solver, "empirical_ntk")


def empirical_nngp(
    model: NeuralODE,
    params: Params,
    x1: Float[ArrayOrNumpy, "N1 d"],
    x2: Float[ArrayOrNumpy, "N2 d"] | None = None,
    depth: int | None = None,
    solver: Solver | SolverName | None = None,
    **kw: Any,
) -> Float[Array, "N1 N2"]:
    """``f(x1) f(x2)^T`` for one network: its average over initializations is the NNGP.

    Args:
        model: the model.
        params: the parameters.
        x1: inputs (N1, d).
        x2: inputs (N2, d), or None for ``x1``.
        depth: None or L.
        solver: as in :meth:`NeuralODE.apply`.
        **kw: solver overrides (steps, rtol, atol, max_steps).

    Returns:
        The outer product (N1, N2).

    Raises:
        ValueError, RuntimeError, FloatingPointError: as :meth:`NeuralODE.apply`.
    """
    y1 = model.apply(params, x1, depth=depth, solver=solver, **kw)
    y2 = y1 if x2 is None else model.apply(params, x2, depth=depth, solver=solver, **kw)
    return y1[:, None] * y2[None, :]


def monte_carlo_kernels(
    model: NeuralODE,
    key: jax.Array,
    x1: Float[ArrayOrNumpy, "N1 d"],
    x2: Float[ArrayOrNumpy, "N2 d"] | None = None,
    *,
    width: int,
    n_samples: int,
    depth: int | None = None,
    solver: Solver | SolverName | None = None,
    quad_nodes: int = 32,
    batch_size: int | None = None,
) -> dict[str, tuple[Array, Array]]:
    """Monte Carlo estimates of the NTK and NNGP from ``n_samples`` random networks.

    Seeds are mapped (``batch_size`` of them at a time through ``jax.lax.map``), compiled once
    for the width. Works under ``jax.jit`` (with ``width``, ``n_samples`` static).

    Args:
        model: the model.
        key: PRNG key (split into ``n_samples`` keys).
        x1: inputs (N1, d).
        x2: inputs (N2, d), or None for ``x1``.
        width: hidden width n.
        n_samples: number of networks (>= 2).
        depth: None or L.
        solver: the ODE solver.
        quad_nodes: time nodes of the structured NTK.
        batch_size: networks per ``lax.map`` batch.

    Returns:
        ``{"ntk": (mean, standard error), "nngp": (mean, standard error)}``: the finite-width NTK
        (structured) and ``f(x1) f(x2)^T``, averaged.

    Raises:
        ValueError: bad arguments.
        RuntimeError: a solve failed.
        FloatingPointError: a non-finite sample.
    """
    if isinstance(n_samples, bool) or int(n_samples) != n_samples or n_samples < 2:
        raise ValueError(f"n_samples must be an integer >= 2, got {n_samples!r}")
    width = positive_int("width", width)
    x1 = check_inputs(x1, None, "x1")
    x2 = None if x2 is None else check_inputs(x2, x1.shape[1], "x2")
    depth = check_depth(depth)
    solver = Solver.make(solver)
    keys = jax.random.split(key, int(n_samples))
    ntk, nngp, ok = _mc_jit(model, keys, x1, x2, int(width), depth, solver, int(quad_nodes), batch_size)
    ntk, nngp = check_solve((ntk, nngp), ok, solver, "monte_carlo_kernels")
    s = math.sqrt(n_samples)
    return {
        "ntk": (ntk.mean(0), ntk.std(0, ddof=1) / s),
        "nngp": (nngp.mean(0), nngp.std(0, ddof=1) / s),
    }


@hyper_jit
def _mc_jit(model, keys, x1, x2, width, depth, solver, quad_nodes, batch_size):
    def one(key):
        p = model.init(key, x1.shape[1], width, x1.dtype)
        bl, ok = structured_blocks(model, p, x1, x2, depth, solver, quad_nodes)
        y1, ok1 = model.forward(p, x1, depth, solver)
        y2, ok2 = (y1, ok1) if x2 is None else model.forward(p, x2, depth, solver)
        return bl[0] + bl[1] + bl[2], y1[:, None] * y2[None, :], ok & ok1 & ok2

    return jax.lax.map(one, keys, batch_size=batch_size)


def structured_blocks(
    model: NeuralODE,
    params: Params,
    x1: Float[Array, "N1 d"],
    x2: Float[Array, "N2 d"] | None,
    depth: int | None,
    solver: Solver,
    quad_nodes: int,
) -> tuple[tuple[Array, Array, Array], Array]:
    """The three blocks of the structured NTK and the solves' success flag (traceable, unchecked).

    Args:
        model: the model.
        params: the parameters.
        x1: inputs (N1, d).
        x2: inputs (N2, d), or None for ``x1`` (features computed once).
        depth: None or L.
        solver: the ODE solver.
        quad_nodes: Gauss-Legendre nodes in time (depth=None).

    Returns:
        ``((Theta_U, Theta_W, Theta_v), ok)``, each block (N1, N2).
    """
    f1 = _features(model, params, x1, depth, solver, quad_nodes)
    f2 = f1 if x2 is None else _features(model, params, x2, depth, solver, quad_nodes)
    return _structured_blocks(model, x1, x1 if x2 is None else x2, f1[:4], f2[:4]), f1[4] & f2[4]
