"""Hyperparameter fitting on the differentiable infinite-width kernels (docs/theory.md section 11).

:func:`traceable_kernel_fn` (from :mod:`ntk_ode.kernels.traceable`, re-exported here) evaluates
the engine's traced core on a fixed grid as a pure, differentiable JAX function of the
hyperparameters ``{"sigma_w", "sigma_u", "sigma_v", "T"}``, with an error estimate on request.

:func:`fit_hyperparameters` fits them to data with optax: the NNGP's Gaussian-process marginal
likelihood, or the validation error of NTK regression (the infinite-time predictor).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from ._checks import check_inputs, positive_int
from .kernels.traceable import HYPERPARAMETERS, traceable_kernel_fn
from .model import NeuralODE

Arr = jax.Array | np.ndarray  # an array (not a scalar)

__all__ = [
    "HYPERPARAMETERS",
    "Fit",
    "fit_hyperparameters",
    "hyperparameters",
    "traceable_kernel_fn",
    "with_hyperparameters",
]

Objective = Literal["nngp_marginal_likelihood", "ntk_validation_mse"]


def hyperparameters(model: NeuralODE) -> dict:
    """The model's hyperparameters as a dict of scalars (the argument of the traceable kernels).

    Args:
        model: the Neural ODE.

    Returns:
        ``{"sigma_w": ..., "sigma_u": ..., "sigma_v": ..., "T": ...}`` as JAX scalars.
    """
    return {k: jnp.asarray(getattr(model, k), jnp.result_type(float)) for k in HYPERPARAMETERS}


def with_hyperparameters(model: NeuralODE, hyper: dict) -> NeuralODE:
    """A copy of ``model`` with the given hyperparameters (concrete values; others unchanged).

    Args:
        model: the Neural ODE.
        hyper: some of ``HYPERPARAMETERS`` with positive values.

    Returns:
        The new model.

    Raises:
        ValueError: an unknown name or a value that is not finite and positive.
    """
    bad = [k for k in hyper if k not in HYPERPARAMETERS]
    if bad:
        raise ValueError(f"hyper: unknown hyperparameter(s) {bad}; expected some of {HYPERPARAMETERS}")
    cfg = model.config()
    cfg.update({k: float(v) for k, v in hyper.items()})
    cfg["activation"] = model.activation
    return NeuralODE(**cfg)


# ----------------------------------------------------------------------------- fitting


@dataclasses.dataclass
class Fit:
    """The result of :func:`fit_hyperparameters`.

    Attributes:
        model: the model with the fitted hyperparameters.
        hyper: the fitted hyperparameters (floats).
        noise: the fitted observation noise variance (marginal likelihood) or the fixed ridge.
        objective: the objective before each step and after the last one, (steps + 1,).
        trace: every fitted quantity before each step and after the last, ``{name: (steps + 1,)}``.
        grad_norm: the largest absolute gradient component (in log space) at the end.
        converged: whether ``grad_norm <= tol`` was reached within ``steps``.
        kernel_error: the estimated relative error of the fixed-grid kernel at the fitted point.
    """

    model: NeuralODE
    hyper: dict
    noise: float
    objective: np.ndarray
    trace: dict
    grad_norm: float
    converged: bool
    kernel_error: float = float("nan")


def nngp_negative_log_likelihood(
    k_train: jax.Array | np.ndarray, y: jax.Array | np.ndarray, noise: ArrayLike
) -> jax.Array:
    """Negative log marginal likelihood of targets ``y`` (N, C) under the GP prior with
    covariance ``k_train + noise I``, per target column and per input (docs/theory.md section 11).

    Args:
        k_train: the NNGP (N, N).
        y: targets (N, C).
        noise: observation noise variance (> 0).

    Returns:
        ``(y^T K^-1 y / 2 + C log det K / 2) / (N C) + log(2 pi) / 2``.
    """
    N, C = y.shape
    L = jnp.linalg.cholesky(k_train + noise * jnp.eye(N, dtype=k_train.dtype))
    alpha = jax.scipy.linalg.solve_triangular(L, y, lower=True)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))
    return (0.5 * jnp.sum(alpha**2) + 0.5 * C * logdet) / (N * C) + 0.5 * math.log(2 * math.pi)


def ntk_regression_mse(
    k_train: jax.Array | np.ndarray,
    k_val_train: jax.Array | np.ndarray,
    y_train: jax.Array | np.ndarray,
    y_val: jax.Array | np.ndarray,
    ridge: ArrayLike,
) -> jax.Array:
    """Mean squared validation error of the infinite-time NTK predictor
    ``f(x_val) = K(x_val, X) (K(X, X) + ridge I)^-1 y_train`` (docs/theory.md section 5).

    Args:
        k_train: NTK on the training inputs (N, N).
        k_val_train: NTK between validation and training inputs (Nv, N).
        y_train: training targets (N, C).
        y_val: validation targets (Nv, C).
        ridge: diagonal regulariser (>= 0).

    Returns:
        The mean of the squared errors.
    """
    N = k_train.shape[0]
    L = jnp.linalg.cholesky(k_train + ridge * jnp.eye(N, dtype=k_train.dtype))
    alpha = jax.scipy.linalg.cho_solve((L, True), y_train)
    return jnp.mean((k_val_train @ alpha - y_val) ** 2)


def _objective_fn(objective, kfn, fixed, x, y, x_val, y_val, ridge):
    def value(theta):
        hyper = {k: (jnp.exp(theta[k]) if k in theta else v) for k, v in fixed.items()}
        if objective == "nngp_marginal_likelihood":
            k = kfn(hyper, x, None, get="nngp")
            return nngp_negative_log_likelihood(k, y, jnp.exp(theta["noise"]))
        k_all = kfn(hyper, jnp.concatenate([x, x_val]), x, get="ntk")
        return ntk_regression_mse(k_all[: x.shape[0]], k_all[x.shape[0] :], y, y_val, ridge)

    return value


def fit_hyperparameters(
    model: NeuralODE,
    x: jax.Array | np.ndarray,
    y: jax.Array | np.ndarray,
    objective: Objective = "nngp_marginal_likelihood",
    optimizer: optax.GradientTransformation | None = None,
    *,
    steps: int = 50,
    tol: float = 1e-5,
    fit: Sequence[str] = HYPERPARAMETERS,
    x_val: jax.Array | np.ndarray | None = None,
    y_val: jax.Array | np.ndarray | None = None,
    noise: float = 1e-2,
    ridge: float = 1e-6,
    depth: int | None = None,
    nodes: int = 16,
    terms: int = 64,
    log: Callable[[str], Any] | None = None,
    kernel_rtol: float = 1e-6,
) -> Fit:
    """Fit the kernel's hyperparameters to data with an optax optimizer (L-BFGS by default).

    The fitted quantities are optimised in log space (they stay positive). Objectives:

    * ``"nngp_marginal_likelihood"``: the GP negative log marginal likelihood per target of
      the NNGP with observation noise variance ``noise`` (fitted too);
    * ``"ntk_validation_mse"``: the validation MSE of infinite-time NTK regression trained on
      ``(x, y)`` with ridge ``ridge`` (fixed), on ``(x_val, y_val)`` (required).

    Args:
        model: the starting point (activation, head, scaling, initial hyperparameters).
        x: training inputs (N, d).
        y: targets (N,) or (N, C).
        objective: one of the two above.
        optimizer: an optax optimizer (default ``optax.lbfgs()``; every optimizer also gets
            ``value``, ``grad`` and ``value_fn``, which line searches need). A point where the
            fixed-grid Picard iteration fails has a NaN objective, which line searches treat as
            outside the domain and step back from.
        steps: at most this many optimizer steps (>= 1).
        tol: stop when every gradient component (in log space) is at most ``tol`` in size.
        fit: which of ``HYPERPARAMETERS`` to fit (others stay at the model's values).
        x_val: validation inputs (``ntk_validation_mse``).
        y_val: validation targets.
        noise: initial noise variance (marginal likelihood).
        ridge: ridge of the NTK predictor (validation MSE).
        depth: None for the ODE kernels, L for the ResNet's.
        nodes: Chebyshev intervals of the ODE's fixed time grid.
        terms: Mehler terms.
        log: called with a progress line every tenth of the steps and at the end.
        kernel_rtol: at the fitted point, the fixed grid's kernel is checked
            (``traceable_kernel_fn(..., with_error=True)``): a RuntimeWarning says when its
            estimated relative error exceeds this (raise ``nodes`` or ``terms``).

    Returns:
        A :class:`Fit` (check ``converged``: ``steps`` may end the fit first, and
        ``kernel_error``: the estimated relative error of the optimised kernel).

    Raises:
        ValueError: bad arguments.
        FloatingPointError: the objective or its gradient became non-finite at an accepted point.
    """
    import optax

    if objective not in ("nngp_marginal_likelihood", "ntk_validation_mse"):
        raise ValueError(f"objective must be 'nngp_marginal_likelihood' or 'ntk_validation_mse', got {objective!r}")
    steps = positive_int("steps", steps)
    fit = tuple(fit)
    if not fit or any(k not in HYPERPARAMETERS for k in fit) or len(set(fit)) != len(fit):
        raise ValueError(f"fit must be distinct names from {HYPERPARAMETERS}, got {fit!r}")
    for name, val in (("noise", noise), ("ridge", ridge), ("tol", tol), ("kernel_rtol", kernel_rtol)):
        if not (isinstance(val, (int, float)) and math.isfinite(val) and val >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {val!r}")
    x = check_inputs(x, None, "x")
    y = _targets(y, x.shape[0], "y")
    if objective == "ntk_validation_mse":
        if x_val is None or y_val is None:
            raise ValueError("objective 'ntk_validation_mse' needs x_val and y_val")
        x_val = check_inputs(x_val, x.shape[1], "x_val", expected_by="x has")
        y_val = _targets(y_val, x_val.shape[0], "y_val", y.shape[1])
    elif noise <= 0:
        raise ValueError(f"noise must be > 0 for the marginal likelihood, got {noise!r}")
    kfn = traceable_kernel_fn(model, depth, nodes=nodes, terms=terms, on_failure="nan")
    fixed = hyperparameters(model)
    theta = {k: jnp.log(fixed[k]) for k in fit}
    if objective == "nngp_marginal_likelihood":
        theta["noise"] = jnp.log(jnp.asarray(noise, x.dtype))
    value = _objective_fn(objective, kfn, fixed, x, y, x_val, y_val, ridge)
    opt = optax.with_extra_args_support(optimizer if optimizer is not None else optax.lbfgs())
    state = opt.init(theta)
    value_and_grad = jax.value_and_grad(value)
    if _stores_value(state):  # line-search optimizers keep the accepted point's value and grad
        value_and_grad = optax.value_and_grad_from_state(value)

    @jax.jit
    def evaluate(theta, state):
        return value_and_grad(theta, state=state) if _stores_value(state) else value_and_grad(theta)

    @jax.jit
    def step(theta, state, val, g):
        updates, state = opt.update(g, state, theta, value=val, grad=g, value_fn=value)
        return optax.apply_updates(theta, updates), state

    objs: list[float] = []
    trace: dict[str, list[float]] = {k: [] for k in theta}
    gnorm = math.inf
    for i in range(int(steps) + 1):
        val, g = evaluate(theta, state)
        gnorm = max(float(jnp.max(jnp.abs(v))) for v in g.values())
        if not (np.isfinite(float(val)) and np.isfinite(gnorm)):
            where = {k: float(jnp.exp(v)) for k, v in theta.items()}
            raise FloatingPointError(
                f"fit_hyperparameters: objective or gradient not finite at step {i}, at {where} "
                "(a Picard iteration that did not converge gives NaN: sigma_w T too large for the grid?)"
            )
        objs.append(float(val))
        for k, v in theta.items():
            trace[k].append(float(jnp.exp(v)))
        done = gnorm <= tol
        if log is not None and (i % max(1, steps // 10) == 0 or i == steps or done):
            now = ", ".join(f"{k}={trace[k][-1]:.4g}" for k in trace)
            log(f"step {i}/{steps}: {objective} {float(val):.6g}, |grad|max {gnorm:.2g}  {now}")
        if done or i == steps:
            break
        theta, state = step(theta, state, val, g)
    hyper = {k: trace[k][-1] if k in fit else float(fixed[k]) for k in HYPERPARAMETERS}
    fitted_noise = trace["noise"][-1] if "noise" in trace else float(ridge)
    kernel_error = _kernel_error(model, depth, nodes, terms, hyper, x, objective)
    if not kernel_error <= kernel_rtol:
        warnings.warn(
            f"fit_hyperparameters: the optimised kernel has an estimated relative error of {kernel_error:.1e} "
            f"at the fitted point {hyper} (fixed grid nodes={nodes}, terms={terms}; above kernel_rtol="
            f"{kernel_rtol:g}): raise nodes or terms, or compare with kernel_fn there",
            RuntimeWarning,
            stacklevel=2,
        )
    return Fit(
        with_hyperparameters(model, {k: hyper[k] for k in fit}),
        hyper,
        fitted_noise,
        np.asarray(objs),
        {k: np.asarray(v) for k, v in trace.items()},
        gnorm,
        gnorm <= tol,
        kernel_error,
    )


def _kernel_error(model, depth, nodes, terms, hyper, x, objective) -> float:
    """The estimated relative error of the fitted kernel on the training inputs."""
    name = "nngp" if objective == "nngp_marginal_likelihood" else "ntk"
    kfn = traceable_kernel_fn(model, depth, nodes=nodes, terms=terms)
    k, e = kfn({h: jnp.asarray(v) for h, v in hyper.items()}, x, get=name, with_error=True)
    return float(e) / max(float(jnp.max(jnp.abs(k))), 1e-300)


def _stores_value(state) -> bool:
    import optax

    try:
        return optax.tree.get(state, "value") is not None
    except (KeyError, ValueError):
        return False


def _targets(y, n: int, name: str, columns: int | None = None):
    y = jnp.asarray(y)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != n or (columns is not None and y.shape[1] != columns):
        want = f"({n},) or ({n}, {'C' if columns is None else columns})"
        raise ValueError(f"{name} must have shape {want}, got {tuple(y.shape)}")
    y = jnp.asarray(y, jnp.result_type(float))
    if not bool(jnp.all(jnp.isfinite(y))):
        raise ValueError(f"{name} contains non-finite values")
    return y
