"""Finite-width NTK of the Neural ODE / weight-tied ResNet, and Monte Carlo kernels.

Methods of :func:`empirical_ntk` (THEORY.md section 2):

* ``"structured"``: from stored forward states and adjoints,

      Theta = sigma_v^2/n z_T . z'_T + sigma_u^2/d (x.x') (lambda_0 . lambda'_0)
            + sigma_w^2/n sum_q sum_r (mu_q . mu'_r) (phi(h_q) . phi(h'_r)),

  with ``mu_q = w_q lambda_{t_q}``. For ``depth=L``: ``phi`` at layer l-1 against ``lambda`` at
  layer l with ``w = dt`` -- the exact NTK of the ResNet. For ``depth=None``: Gauss-Legendre
  nodes in time (``quad_nodes``), states and adjoints from diffrax solves; accurate to the
  solver tolerance and the quadrature (spectral for smooth activations).
  Cost O(N1 N2 Q^2 + (N1 + N2) Q n) per call after the solves, memory O((N1 + N2) Q n).
* ``"jacobian"``: ``jacrev`` of the outputs, contracted leaf by leaf (never one big Jacobian).
* ``"ntvp"``: NTK-vector products ``J1 (J2^T e_j)`` one column at a time (memory O(params)).

:func:`empirical_ntk_fn` is the generic form for any ``f(params, x)``: like neural-tangents'
``empirical_ntk_fn`` with ``trace_axes=(-1,)``, output axes after the batch axis are summed
over (traced); for scalar outputs it is the plain NTK.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .gradients import _resnet_adjoint_states, _ode_adjoint_traj, _head_features
from .model import NeuralODE, Solver, _raise_if_failed, check_depth, check_inputs, check_params

__all__ = ["empirical_ntk", "empirical_ntk_fn", "empirical_nngp", "monte_carlo_kernels", "NTK_METHODS", "gauss_legendre"]

NTK_METHODS = ("structured", "jacobian", "ntvp")


def gauss_legendre(q: int, T: float):
    z, w = np.polynomial.legendre.leggauss(int(q))
    return T * (z + 1.0) / 2.0, T * w / 2.0


# ----------------------------------------------------------------------------- structured


def _features(model, params, x, depth, solver, quad_nodes):
    """Per-input features: (z_T (N, n), lambda_0 (N, n), mu (N, Q, n), phi (N, Q, n), ok)."""
    if depth is not None:
        hs, lams = _resnet_adjoint_states(model, params, x, depth)  # (L+1, N, n)
        dt = model.T / depth
        mu = dt * jnp.swapaxes(lams[1:], 0, 1)
        ph = model.activation.fn(jnp.swapaxes(hs[:-1], 0, 1))
        return _head_features(model, hs[-1]), lams[0], mu, ph, jnp.asarray(True)
    tq, wq = gauss_legendre(quad_nodes, model.T)
    ts = jnp.asarray(np.concatenate([[0.0], tq, [model.T]]), x.dtype)
    hs, lams, ok = _ode_adjoint_traj(model, params, x, ts, solver)  # (Q+2, N, n)
    mu = jnp.asarray(wq, x.dtype)[None, :, None] * jnp.swapaxes(lams[1:-1], 0, 1)
    ph = model.activation.fn(jnp.swapaxes(hs[1:-1], 0, 1))
    return _head_features(model, hs[-1]), lams[0], mu, ph, ok


def _structured_blocks(model, x1, x2, f1, f2):
    z1, l1, mu1, p1 = f1
    z2, l2, mu2, p2 = f2
    n = z1.shape[-1]
    kv = (model.sigma_v**2 / n) * z1 @ z2.T
    ku = model.input_scale(x1.shape[1]) ** 2 * (x1 @ x2.T) * (l1 @ l2.T)
    gl = jnp.einsum("iqk,jrk->ijqr", mu1, mu2)
    gp = jnp.einsum("iqk,jrk->ijqr", p1, p2)
    kw = (model.sigma_w**2 / n) * jnp.sum(gl * gp, axis=(2, 3))
    return ku, kw, kv


@eqx.filter_jit
def _structured_jit(model, params, x1, x2, depth, solver, quad_nodes):
    return _structured_blocks_from(model, params, x1, x2, depth, solver, quad_nodes)


# ----------------------------------------------------------------------------- generic


def _out_fn(model, depth, solver):
    def f(p, x):
        return model.readout(p["v"], model.final_state(p, x, depth, solver))

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


def empirical_ntk_fn(f, method: str = "jacobian"):
    """``ntk(x1, x2, params)`` for any ``f(params, x) -> (N, ...)`` ("jacobian" or "ntvp").

    Output axes after the batch axis are traced (summed), as neural-tangents does with
    ``trace_axes=(-1,)``; ``x2=None`` means ``x2 = x1``.
    """
    if method not in ("jacobian", "ntvp"):
        raise ValueError(f"method must be 'jacobian' or 'ntvp', got {method!r}")
    impl = _jacobian_ntk if method == "jacobian" else _ntvp_ntk

    @jax.jit
    def ntk(x1, x2, params):
        return impl(f, params, x1, x2)

    return ntk


@eqx.filter_jit
def _generic_jit(model, params, x1, x2, depth, solver, method):
    impl = _jacobian_ntk if method == "jacobian" else _ntvp_ntk
    return impl(_out_fn(model, depth, solver), params, x1, x2)


# ----------------------------------------------------------------------------- public


def empirical_ntk(
    model: NeuralODE,
    params,
    x1,
    x2=None,
    depth=None,
    method: str = "structured",
    solver=None,
    *,
    quad_nodes: int = 32,
    blocks: bool = False,
    steps=None,
    rtol=None,
    atol=None,
    max_steps=None,
):
    """The finite-width NTK ``Theta(x1, x2) = J(x1) J(x2)^T``: (N1, N2).

    ``blocks=True`` (structured only) returns ``(Theta_U, Theta_W, Theta_v)``, summing to Theta.
    ``x2=None`` uses ``x1`` (and computes its features once). Solver options as in
    :meth:`NeuralODE.apply`; ``quad_nodes`` is the Gauss-Legendre rule in time for
    ``depth=None`` with ``method="structured"``.
    """
    if method not in NTK_METHODS:
        raise ValueError(f"method must be one of {NTK_METHODS}, got {method!r}")
    n, d = check_params(params)
    x1 = check_inputs(x1, d, "x1")
    x2 = None if x2 is None else check_inputs(x2, d, "x2")
    depth = check_depth(depth)
    if int(quad_nodes) != quad_nodes or quad_nodes < 1:
        raise ValueError(f"quad_nodes must be a positive integer, got {quad_nodes!r}")
    solver = Solver.make(solver, steps=steps, rtol=rtol, atol=atol, max_steps=max_steps)
    if method == "structured":
        bl, ok = _structured_jit(model, params, x1, x2, depth, solver, int(quad_nodes))
        _raise_if_failed(ok, solver, "adjoint")
        return bl if blocks else bl[0] + bl[1] + bl[2]
    if blocks:
        raise ValueError("blocks=True needs method='structured'")
    if method == "ntvp" and depth is None:
        solver = dataclasses.replace(solver, forward_mode=True)  # jvp through the solve
    return _generic_jit(model, params, x1, x2, depth, solver, method)


def empirical_nngp(model, params, x1, x2=None, depth=None, solver=None, **kw):
    """``f(x1) f(x2)^T`` for one network: its average over initializations is the NNGP."""
    y1 = model.apply(params, x1, depth=depth, solver=solver, **kw)
    y2 = y1 if x2 is None else model.apply(params, x2, depth=depth, solver=solver, **kw)
    return y1[:, None] * y2[None, :]


def monte_carlo_kernels(
    model: NeuralODE,
    key,
    x1,
    x2=None,
    *,
    width: int,
    n_samples: int,
    depth=None,
    solver=None,
    quad_nodes: int = 32,
    batch_size: int | None = None,
):
    """Mean and standard error over ``n_samples`` initializations of the finite-width NTK
    (structured) and of ``f(x1) f(x2)^T`` (the NNGP estimate).

    Returns ``{"ntk": (mean, se), "nngp": (mean, se)}``. Seeds are vmapped (``batch_size`` of them
    at a time through ``jax.lax.map``), compiled once for the width.
    """
    if int(n_samples) != n_samples or n_samples < 2:
        raise ValueError(f"n_samples must be an integer >= 2, got {n_samples!r}")
    x1 = check_inputs(x1, None, "x1")
    x2 = None if x2 is None else check_inputs(x2, x1.shape[1], "x2")
    depth = check_depth(depth)
    solver = Solver.make(solver)
    keys = jax.random.split(key, int(n_samples))
    ntk, nngp, ok = _mc_jit(model, keys, x1, x2, int(width), depth, solver, int(quad_nodes), batch_size)
    _raise_if_failed(bool(jnp.all(ok)), solver, "Monte Carlo")
    s = math.sqrt(n_samples)
    return {
        "ntk": (ntk.mean(0), ntk.std(0, ddof=1) / s),
        "nngp": (nngp.mean(0), nngp.std(0, ddof=1) / s),
    }


@eqx.filter_jit
def _mc_jit(model, keys, x1, x2, width, depth, solver, quad_nodes, batch_size):
    xb = x1 if x2 is None else x2

    def one(key):
        p = model.init(key, x1.shape[1], width, x1.dtype)
        bl, ok = _structured_blocks_from(model, p, x1, x2, depth, solver, quad_nodes)
        y1 = model.readout(p["v"], model.final_state(p, x1, depth, solver))
        y2 = y1 if x2 is None else model.readout(p["v"], model.final_state(p, xb, depth, solver))
        return bl[0] + bl[1] + bl[2], y1[:, None] * y2[None, :], ok

    return jax.lax.map(one, keys, batch_size=batch_size)


def _structured_blocks_from(model, params, x1, x2, depth, solver, quad_nodes):
    f1 = _features(model, params, x1, depth, solver, quad_nodes)
    f2 = f1 if x2 is None else _features(model, params, x2, depth, solver, quad_nodes)
    return _structured_blocks(model, x1, x1 if x2 is None else x2, f1[:4], f2[:4]), f1[4] & f2[4]
