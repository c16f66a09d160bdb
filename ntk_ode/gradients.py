"""Per-example gradients of the Neural ODE and the weight-tied ResNet, both ways.

* ``method="backprop"`` (discretize-then-optimize): reverse-mode autodiff through the discrete
  solve. For ``depth=L`` this is the exact gradient of ``f^L``.
* ``method="adjoint"`` (optimize-then-discretize), THEORY.md section 1: with
  ``lambda_t = df/dh_t``,

      lambda_T = sigma_v v / sqrt(n)          (head linear; head phi: sigma_v phi'(h_T) * v / sqrt(n))
      d lambda/dt = -sigma_w / sqrt(n) diag(phi'(h_t)) W^T lambda_t     (T down to 0)
      grad_W = sigma_w / sqrt(n) int_0^T lambda_t phi(h_t)^T dt
      grad_U = sigma_u / sqrt(d) lambda_0 x^T,   grad_v = sigma_v / sqrt(n) h_T  (or phi(h_T))

  For ``depth=None`` the augmented state (h, lambda, grad_W) is integrated backwards from T to
  0 with diffrax (h re-integrated backwards, as in Chen et al. 2018). For ``depth=L`` the same
  formulas hold with the discrete adjoint ``lambda^{l-1} = lambda^l + dt sigma_w/sqrt(n)
  diag(phi'(h^{l-1})) W^T lambda^l`` and ``grad_W = dt sigma_w/sqrt(n) sum_l lambda^l phi(h^{l-1})^T``,
  written by hand (an independent check of autodiff).

:func:`adjoint_trajectory` exposes ``(h_t, lambda_t)`` on a time grid (all ``L + 1`` layers for
``depth=L``); the structured NTK is built from these.
"""

from __future__ import annotations

import math

import warnings

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from .model import (
    NeuralODE,
    Solver,
    _is_traced,
    _raise_if_failed,
    _raise_if_nonfinite,
    check_depth,
    check_inputs,
    check_params,
    check_times,
)

__all__ = ["grad", "adjoint_trajectory", "terminal_adjoint", "METHODS"]

METHODS = ("adjoint", "backprop")


def terminal_adjoint(model: NeuralODE, v, hT):
    """``lambda_T = df/dh_T`` for a batch ``hT`` (N, n)."""
    lam = (model.sigma_v / math.sqrt(v.shape[0])) * jnp.broadcast_to(v, hT.shape)
    return lam * model.activation.dfn(hT) if model.head == "phi" else lam


def _head_features(model: NeuralODE, hT):
    return model.activation.fn(hT) if model.head == "phi" else hT


def _assemble(model, params, x, lam0, gW, hT):
    n = params["W"].shape[0]
    return {
        "U": model.input_scale(x.shape[1]) * lam0[:, :, None] * x[:, None, :],
        "W": gW,
        "v": (model.sigma_v / math.sqrt(n)) * _head_features(model, hT),
    }


# ----------------------------------------------------------------------------- discrete adjoint


def _resnet_adjoint_states(model, params, x, depth):
    """States h^0..h^L and adjoints lambda^0..lambda^L, each (L + 1, N, n)."""
    W = params["W"]
    c = (model.T / depth) * model.sigma_w / math.sqrt(W.shape[0])
    hs = model.resnet_states(params, x, depth)
    lamL = terminal_adjoint(model, params["v"], hs[-1])

    def back(lam, h_prev):
        lam = lam + c * model.activation.dfn(h_prev) * (lam @ W)
        return lam, lam

    _, lams = jax.lax.scan(back, lamL, hs[:-1], reverse=True)
    return hs, jnp.concatenate([lams, lamL[None]], axis=0)


def _resnet_adjoint_grad(model, params, x, depth):
    hs, lams = _resnet_adjoint_states(model, params, x, depth)
    c = (model.T / depth) * model.sigma_w / math.sqrt(params["W"].shape[0])
    gW = c * jnp.einsum("lni,lnj->nij", lams[1:], model.activation.fn(hs[:-1]))
    return _assemble(model, params, x, lams[0], gW, hs[-1])


# ----------------------------------------------------------------------------- continuous adjoint


def _adjoint_field(model, with_grad: bool):
    phi, dphi = model.activation.fn, model.activation.dfn

    def field(t, y, W):
        c = model.sigma_w / math.sqrt(W.shape[0])
        h, lam = y[0], y[1]
        out = (c * phi(h) @ W.T, -c * dphi(h) * (lam @ W))
        if with_grad:
            out = out + (-c * lam[:, :, None] * phi(h)[:, None, :],)
        return out

    return diffrax.ODETerm(field)


def _ode_adjoint_grad(model, params, x, solver):
    W = params["W"]
    hT, ok_f = model.final_state(params, x, None, solver, throw=False)
    lamT = terminal_adjoint(model, params["v"], hT)
    y0 = (hT, lamT, jnp.zeros(hT.shape + (W.shape[0],), hT.dtype))
    sol = model._diffeqsolve(
        W, hT, solver, diffrax.SaveAt(t1=True), model.T, 0.0, False, terms=_adjoint_field(model, True), y0=y0
    )
    _, lam0, gW = (s[-1] for s in sol.ys)
    ok = ok_f & (sol.result == diffrax.RESULTS.successful)
    return _assemble(model, params, x, lam0, gW, hT), ok


def _ode_adjoint_traj(model, params, x, ts, solver):
    hT, ok_f = model.final_state(params, x, None, solver, throw=False)
    lamT = terminal_adjoint(model, params["v"], hT)
    sol = model._diffeqsolve(
        params["W"], hT, solver, diffrax.SaveAt(ts=ts[::-1]), model.T, 0.0, False,
        terms=_adjoint_field(model, False), y0=(hT, lamT),
    )
    hs, lams = sol.ys
    return hs[::-1], lams[::-1], ok_f & (sol.result == diffrax.RESULTS.successful)


# ----------------------------------------------------------------------------- backprop


def _backprop_grad(model, params, x, depth, solver):
    def f(p):
        hT, ok = model.final_state(p, x, depth, solver, throw=False)
        return model.readout(p["v"], hT), ok

    g, ok = jax.jacrev(f, has_aux=True)(params)
    return g, ok


def warn_backprop_through_kinks(model, depth, method, solver) -> None:
    """Warn where backprop through an adaptive solve of a kinked activation is unreliable.

    With a kink in phi (relu-like: phi' jumps), autodiff of an adaptive solve differentiates the
    discrete steps the controller happened to take, and the result does not converge to the true
    gradient as rtol shrinks (1e-4 relative was measured for relu). The continuous adjoint
    integrates the exact adjoint ODE and converges; fixed steps are the exact gradient of the
    discrete model. Called by :func:`grad` and by training.
    """
    if method != "backprop" or depth is not None or solver.steps is not None:
        return
    act = model.activation
    if act.kinks or not act.dphi_lipschitz:
        warnings.warn(
            f"grad: method='backprop' through an adaptive solver with the kinked activation "
            f"{act.name!r} does not converge to the true gradient as rtol shrinks (errors ~1e-4 seen "
            "for relu); use method='adjoint' (the default) or fixed steps",
            RuntimeWarning, stacklevel=3,
        )


@eqx.filter_jit
def _grad_jit(model, params, x, depth, method, solver):
    if method == "backprop":
        return _backprop_grad(model, params, x, depth, solver)
    if depth is not None:
        return _resnet_adjoint_grad(model, params, x, depth), jnp.asarray(True)
    return _ode_adjoint_grad(model, params, x, solver)


def grad(model: NeuralODE, params, x, depth=None, method="adjoint", solver=None, *, steps=None, rtol=None, atol=None, max_steps=None):
    """Per-example gradients ``d f(x_i) / d theta``: params' structure with a leading axis N.

    ``method``: "adjoint" (continuous adjoint for ``depth=None``, hand-written discrete adjoint
    for ``depth=L``) or "backprop" (autodiff through the solver). Solver options as in
    :meth:`NeuralODE.apply`. Raises ``RuntimeError`` if a solve fails.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    n, d = check_params(params)
    x = check_inputs(x, d)
    depth = check_depth(depth)
    solver = Solver.make(solver, steps=steps, rtol=rtol, atol=atol, max_steps=max_steps)
    warn_backprop_through_kinks(model, depth, method, solver)
    g, ok = _grad_jit(model, params, x, depth, method, solver)
    if not _is_traced(ok):
        _raise_if_failed(ok, solver, "adjoint" if method == "adjoint" else "forward")
        _raise_if_nonfinite(g["W"], "grad")
    return g


@eqx.filter_jit
def _adjoint_traj_jit(model, params, x, ts, depth, solver):
    if depth is not None:
        hs, lams = _resnet_adjoint_states(model, params, x, depth)
        return hs, lams, jnp.asarray(True)
    return _ode_adjoint_traj(model, params, x, ts, solver)


def adjoint_trajectory(model: NeuralODE, params, x, ts=None, depth=None, solver=None, *, steps=None, rtol=None, atol=None, max_steps=None):
    """Forward states and adjoints on a time grid: ``(h, lam)``, each (N, M, n).

    ``depth=L``: the layers l = 0..L of the ResNet and its exact discrete adjoint (``ts=None``).
    ``depth=None``: the ODE solution and the continuous adjoint at the times ``ts`` (ascending in
    [0, T]), from one forward and one backward diffrax solve.
    """
    n, d = check_params(params)
    x = check_inputs(x, d)
    depth = check_depth(depth)
    if depth is not None and ts is not None:
        raise ValueError("ts must be None when depth is given (the grid is l = 0..L)")
    if depth is None:
        ts = check_times(ts, model.T)
    solver = Solver.make(solver, steps=steps, rtol=rtol, atol=atol, max_steps=max_steps)
    hs, lams, ok = _adjoint_traj_jit(model, params, x, ts, depth, solver)
    _raise_if_failed(ok, solver, "adjoint")
    return jnp.swapaxes(hs, 0, 1), jnp.swapaxes(lams, 0, 1)


# ----------------------------------------------------------------------------- VJP of the batch


def _ode_adjoint_vjp(model, params, x, cot, solver):
    """``sum_i cot_i grad f(x_i)`` by one backward solve with state (h, lambda, G), G of shape (n, n)."""
    W = params["W"]
    hT, ok_f = model.final_state(params, x, None, solver, throw=False)
    lamT = cot[:, None] * terminal_adjoint(model, params["v"], hT)
    phi = model.activation.fn

    def field(t, y, W):
        c = model.sigma_w / math.sqrt(W.shape[0])
        h, lam, _ = y
        return c * phi(h) @ W.T, -c * model.activation.dfn(h) * (lam @ W), -c * lam.T @ phi(h)

    sol = model._diffeqsolve(W, hT, solver, diffrax.SaveAt(t1=True), model.T, 0.0, False,
                             terms=diffrax.ODETerm(field), y0=(hT, lamT, jnp.zeros_like(W)))
    _, lam0, gW = (s[-1] for s in sol.ys)
    n = W.shape[0]
    g = {"U": model.input_scale(x.shape[1]) * lam0.T @ x, "W": gW,
         "v": (model.sigma_v / math.sqrt(n)) * cot @ _head_features(model, hT)}
    return g, ok_f & (sol.result == diffrax.RESULTS.successful)


def batch_vjp(model, params, x, cotangent, depth=None, method="adjoint", solver=None):
    """``sum_i cotangent_i * d f(x_i) / d theta`` (traceable; returns ``(grads, ok)``).

    With ``method="adjoint"`` and ``depth=None`` this is one continuous-adjoint solve whose
    gradient state is a single (n, n) matrix, not N of them; otherwise reverse-mode autodiff.
    """
    solver = Solver.make(solver)
    if method == "adjoint" and depth is None:
        return _ode_adjoint_vjp(model, params, x, cotangent, solver)

    def f(p):
        hT, ok = model.final_state(p, x, depth, solver, throw=False)
        return model.readout(p["v"], hT), ok

    _, vjp, ok = jax.vjp(f, params, has_aux=True)
    return vjp(cotangent)[0], ok
