"""Per-example gradients of the Neural ODE and the weight-tied ResNet, both ways.

* ``method="backprop"`` (discretize-then-optimize): reverse-mode autodiff through the discrete
  solve. For ``depth=L`` this is the exact gradient of ``f^L``. One reverse pass per example,
  vmapped (O(N) work; ``jacrev`` of the batched map would be O(N^2)); with an adaptive solver
  each example's steps are chosen for it alone, so the gradients agree with those of the
  batched forward map to the solver's tolerance (exactly with fixed steps or ``depth=L``).
* ``method="adjoint"`` (optimize-then-discretize), docs/theory.md section 1: with
  ``lambda_t = df/dh_t``,

      lambda_T = sigma_v v / sqrt(n)          (head linear; head phi: sigma_v phi'(h_T) * v / sqrt(n))
      d lambda/dt = -sigma_w / sqrt(n) diag(phi'(h_t)) W^T lambda_t     (T down to 0)
      grad_W = sigma_w / sqrt(n) int_0^T lambda_t phi(h_t)^T dt
      grad_U = sigma_u / sqrt(d) lambda_0 x^T,   grad_v = sigma_v / sqrt(n) h_T  (or phi(h_T))

  For ``depth=None`` the augmented state (h, lambda, grad_W) is integrated backwards from T to
  0 with diffrax (h re-integrated backwards, as in Chen et al. 2018). For ``depth=L`` the same
  formulas hold with the discrete adjoint ``lambda^{l-1} = lambda^l + dt sigma_w/sqrt(n)
  diag(phi'(h^{l-1})) W^T lambda^l`` and ``grad_W = dt sigma_w/sqrt(n) sum_l lambda^l phi(h^{l-1})^T``,
  written by hand (an independent check of autodiff). The two fields are the model's
  :meth:`~ntk_ode.model.NeuralODE.vector_field` and :meth:`~ntk_ode.model.NeuralODE.adjoint_field`.

:func:`adjoint_trajectory` exposes ``(h_t, lambda_t)`` on a time grid (all ``L + 1`` layers for
``depth=L``); the structured NTK is built from the traceable pieces :func:`resnet_adjoint_states`
and :func:`ode_adjoint_states`.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal, get_args

import diffrax
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float

from ._checks import ArrayOrNumpy, check_depth, check_inputs
from .model import NeuralODE, Params, Solver, SolverName, check_params, check_solve, check_times, hyper_jit

__all__ = [
    "grad",
    "adjoint_trajectory",
    "batch_vjp",
    "resnet_adjoint_states",
    "ode_adjoint_states",
    "warn_backprop_through_kinks",
    "GradMethod",
    "GRAD_METHODS",
]

GradMethod = Literal["adjoint", "backprop"]
GRAD_METHODS: tuple[str, ...] = get_args(GradMethod)


def _assemble(model, params, x, lam0, gW, hT):
    n = params["W"].shape[0]
    return {
        "U": model.input_scale(x.shape[1]) * lam0[:, :, None] * x[:, None, :],
        "W": gW,
        "v": (model.sigma_v / math.sqrt(n)) * model.head_features(hT),
    }


# ----------------------------------------------------------------------------- discrete adjoint


def resnet_adjoint_states(
    model: NeuralODE, params: Params, x: Float[Array, "N d"], depth: int
) -> tuple[Float[Array, "L1 N n"], Float[Array, "L1 N n"]]:
    """States and exact discrete adjoints of the weight-tied ResNet (traceable).

    ``lambda^{l-1} = lambda^l + dt sigma_w / sqrt(n) diag(phi'(h^{l-1})) W^T lambda^l`` from
    ``lambda^L = model.terminal_adjoint(v, h^L)``.

    Args:
        model: the model.
        params: the parameters.
        x: inputs (N, d).
        depth: L.

    Returns:
        ``(h, lambda)``: states h^0..h^L and adjoints lambda^0..lambda^L, each (L + 1, N, n).
    """
    W = params["W"]
    dt = model.T / depth
    hs = model.resnet_states(params, x, depth)
    lamL = model.terminal_adjoint(params["v"], hs[-1])

    def back(lam, h_prev):
        lam = lam - dt * model.adjoint_field(W, h_prev, lam)
        return lam, lam

    _, lams = jax.lax.scan(back, lamL, hs[:-1], reverse=True)
    return hs, jnp.concatenate([lams, lamL[None]], axis=0)


def _resnet_adjoint_grad(model, params, x, depth):
    hs, lams = resnet_adjoint_states(model, params, x, depth)
    c = (model.T / depth) * model.sigma_w / math.sqrt(params["W"].shape[0])
    gW = c * jnp.einsum("lni,lnj->nij", lams[1:], model.activation.fn(hs[:-1]))
    return _assemble(model, params, x, lams[0], gW, hs[-1])


# ----------------------------------------------------------------------------- continuous adjoint


def _augmented_field(model: NeuralODE, gradient_state: str | None):
    """The backward system: h and lambda from the model's two fields, plus a gradient state
    ``dG/dt = -sigma_w/sqrt(n) lambda phi(h)^T`` per example ("per_example") or summed ("sum")."""
    phi = model.activation.fn

    def field(t, y, W):
        h, lam = y[0], y[1]
        out: tuple = (model.vector_field(W, h), model.adjoint_field(W, h, lam))
        c = model.sigma_w / math.sqrt(W.shape[0])
        if gradient_state == "per_example":
            out = out + (-c * lam[:, :, None] * phi(h)[:, None, :],)
        elif gradient_state == "sum":
            out = out + (-c * lam.T @ phi(h),)
        return out

    return diffrax.ODETerm(field)


def _backward_solve(model, params, x, solver, saveat, gradient_state, cotangent=None):
    """Forward solve to h_T, then one backward solve of (h, lambda[, G]) from T to 0."""
    W = params["W"]
    hT, ok_f = model.final_state(params, x, None, solver)
    lamT = model.terminal_adjoint(params["v"], hT)
    if cotangent is not None:
        lamT = cotangent[:, None] * lamT
    y0: tuple = (hT, lamT)
    if gradient_state == "per_example":
        y0 = y0 + (jnp.zeros(hT.shape + (W.shape[0],), hT.dtype),)
    elif gradient_state == "sum":
        y0 = y0 + (jnp.zeros_like(W),)
    sol = model.solve(W, hT, solver, saveat, model.T, 0.0, terms=_augmented_field(model, gradient_state), y0=y0)
    return hT, sol.ys, ok_f & (sol.result == diffrax.RESULTS.successful)


def _ode_adjoint_grad(model, params, x, solver):
    hT, ys, ok = _backward_solve(model, params, x, solver, diffrax.SaveAt(t1=True), "per_example")
    _, lam0, gW = (s[-1] for s in ys)
    return _assemble(model, params, x, lam0, gW, hT), ok


def ode_adjoint_states(
    model: NeuralODE, params: Params, x: Float[Array, "N d"], ts: Float[Array, " M"], solver: Solver
) -> tuple[Float[Array, "M N n"], Float[Array, "M N n"], Bool[Array, ""]]:
    """States and continuous adjoints of the Neural ODE at the times ``ts`` (traceable).

    One forward solve to ``h_T``, then one backward solve of ``(h, lambda)`` (h re-integrated
    backwards, as in Chen et al. 2018).

    Args:
        model: the model.
        params: the parameters.
        x: inputs (N, d).
        ts: ascending times in [0, T].
        solver: the ODE solver.

    Returns:
        ``(h, lambda, ok)``: each of the first two (M, N, n), in the order of ``ts``.
    """
    _, (hs, lams), ok = _backward_solve(model, params, x, solver, diffrax.SaveAt(ts=ts[::-1]), None)
    return hs[::-1], lams[::-1], ok


# ----------------------------------------------------------------------------- backprop


def _backprop_grad(model, params, x, depth, solver):
    """Per-example reverse passes, vmapped over the examples: O(N) work, where ``jacrev`` of
    the batched forward map does N reverse passes through the whole batch (O(N^2))."""

    def output(p, xi):
        y, ok = model.forward(p, xi[None], depth, solver)
        return y[0], ok

    g, ok = jax.vmap(lambda xi: jax.grad(output, has_aux=True)(params, xi))(x)
    return g, jnp.all(ok)


def warn_backprop_through_kinks(model: NeuralODE, depth: int | None, method: str, solver: Solver) -> None:
    """Warn where backprop through an adaptive solve of a kinked activation is unreliable.

    With a kink in phi (relu-like: phi' jumps), autodiff of an adaptive solve differentiates the
    discrete steps the controller happened to take, and the result does not converge to the true
    gradient as rtol shrinks (1e-4 relative was measured for relu). The continuous adjoint
    integrates the exact adjoint ODE and converges; fixed steps are the exact gradient of the
    discrete model. Called by :func:`grad` and by training.

    Args:
        model: the model.
        depth: None or L.
        method: the gradient method.
        solver: the ODE solver.

    Warns:
        RuntimeWarning: backprop, ODE, adaptive steps and a kinked activation.
    """
    if method != "backprop" or depth is not None or solver.steps is not None:
        return
    act = model.activation
    if act.kinks or not act.dphi_lipschitz:
        warnings.warn(
            f"grad: method='backprop' through an adaptive solver with the kinked activation "
            f"{act.name!r} does not converge to the true gradient as rtol shrinks (errors ~1e-4 seen "
            "for relu); use method='adjoint' (the default) or fixed steps",
            RuntimeWarning,
            stacklevel=3,
        )


def check_grad_method(method: str, allow_auto: bool = False) -> str:
    """Validate a gradient method name.

    Args:
        method: "adjoint" or "backprop" (or "auto" where allowed).
        allow_auto: whether "auto" is accepted.

    Returns:
        ``method``.

    Raises:
        ValueError: any other value.
    """
    ok = GRAD_METHODS + (("auto",) if allow_auto else ())
    if method not in ok:
        raise ValueError(f"method (the gradient method) must be one of {ok}, got {method!r}")
    return method


@hyper_jit
def _grad_jit(model, params, x, depth, method, solver):
    if method == "backprop":
        return _backprop_grad(model, params, x, depth, solver)
    if depth is not None:
        return _resnet_adjoint_grad(model, params, x, depth), jnp.asarray(True)
    return _ode_adjoint_grad(model, params, x, solver)


def grad(
    model: NeuralODE,
    params: Params,
    x: Float[ArrayOrNumpy, "N d"],
    depth: int | None = None,
    method: GradMethod = "adjoint",
    solver: Solver | SolverName | None = None,
    *,
    steps: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int | None = None,
) -> Params:
    """Per-example gradients ``d f(x_i) / d theta``.

    Pure JAX: works under ``jax.jit`` and ``jax.vmap``.

    Args:
        model: the model.
        params: the parameters.
        x: inputs (N, d).
        depth: None (the ODE) or L (the tied ResNet).
        method: "adjoint" (continuous adjoint for ``depth=None``, hand-written discrete adjoint
            for ``depth=L``) or "backprop" (autodiff through the solver).
        solver: as in :meth:`NeuralODE.apply`.
        steps: override the solver's number of fixed steps.
        rtol: override the solver's relative tolerance.
        atol: override the solver's absolute tolerance.
        max_steps: override the solver's step budget.

    Returns:
        The parameters' structure with a leading axis N: ``{"U": (N, n, d), "W": (N, n, n),
        "v": (N, n)}``.

    Raises:
        ValueError: bad shapes or options.
        RuntimeError: a solve failed.
        FloatingPointError: a non-finite gradient.
    """
    check_grad_method(method)
    n, d = check_params(params)
    x = check_inputs(x, d)
    depth = check_depth(depth)
    solver = Solver.make(solver, steps=steps, rtol=rtol, atol=atol, max_steps=max_steps)
    warn_backprop_through_kinks(model, depth, method, solver)
    g, ok = _grad_jit(model, params, x, depth, method, solver)
    return check_solve(g, ok, solver, "grad")


@hyper_jit
def _adjoint_traj_jit(model, params, x, ts, depth, solver):
    if depth is not None:
        hs, lams = resnet_adjoint_states(model, params, x, depth)
        return hs, lams, jnp.asarray(True)
    return ode_adjoint_states(model, params, x, ts, solver)


def adjoint_trajectory(
    model: NeuralODE,
    params: Params,
    x: Float[ArrayOrNumpy, "N d"],
    ts: ArrayLike | None = None,
    depth: int | None = None,
    solver: Solver | SolverName | None = None,
    *,
    steps: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int | None = None,
) -> tuple[Float[Array, "N M n"], Float[Array, "N M n"]]:
    """Forward states and adjoints on a time grid.

    Args:
        model: the model.
        params: the parameters.
        x: inputs (N, d).
        ts: for ``depth=None`` the times (ascending in [0, T]); None for ``depth=L``.
        depth: None (the ODE and its continuous adjoint, from one forward and one backward
            diffrax solve) or L (layers l = 0..L and the exact discrete adjoint).
        solver: as in :meth:`NeuralODE.apply`.
        steps: override the solver's number of fixed steps.
        rtol: override the solver's relative tolerance.
        atol: override the solver's absolute tolerance.
        max_steps: override the solver's step budget.

    Returns:
        ``(h, lambda)``, each (N, M, n).

    Raises:
        ValueError: bad shapes, times or options.
        RuntimeError: a solve failed.
        FloatingPointError: a non-finite state or adjoint.
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
    hs, lams = check_solve((hs, lams), ok, solver, "adjoint_trajectory")
    return jnp.swapaxes(hs, 0, 1), jnp.swapaxes(lams, 0, 1)


# ----------------------------------------------------------------------------- VJP of the batch


def batch_vjp(
    model: NeuralODE,
    params: Params,
    x: Float[Array, "N d"],
    cotangent: Float[Array, " N"],
    depth: int | None = None,
    method: GradMethod = "adjoint",
    solver: Solver | None = None,
) -> tuple[Params, Bool[Array, ""]]:
    """``sum_i cotangent_i * d f(x_i) / d theta`` (traceable, unchecked).

    With ``method="adjoint"`` and ``depth=None`` this is one continuous-adjoint solve whose
    gradient state is a single (n, n) matrix, not N of them; otherwise reverse-mode autodiff.

    Args:
        model: the model.
        params: the parameters.
        x: inputs (N, d).
        cotangent: weights (N,) (e.g. the residual f - y: then this is the MSE gradient).
        depth: None or L.
        method: "adjoint" or "backprop".
        solver: the ODE solver.

    Returns:
        ``(gradient, ok)``: the parameters' structure, and the solve's success flag.
    """
    solver = Solver.make(solver)
    if method == "adjoint" and depth is None:
        hT, (_, lam0, gW), ok = _backward_solve(
            model, params, x, solver, diffrax.SaveAt(t1=True), "sum", cotangent=cotangent
        )
        lam0, gW = lam0[-1], gW[-1]
        n = params["W"].shape[0]
        g = {
            "U": model.input_scale(x.shape[1]) * lam0.T @ x,
            "W": gW,
            "v": (model.sigma_v / math.sqrt(n)) * cotangent @ model.head_features(hT),
        }
        return g, ok
    _, vjp, ok = jax.vjp(lambda p: model.forward(p, x, depth, solver), params, has_aux=True)
    return vjp(cotangent)[0], ok
