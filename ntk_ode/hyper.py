"""Differentiable infinite-width kernels and hyperparameter fitting (docs/theory.md section 11).

:func:`traceable_kernel_fn` evaluates the same equations as :func:`ntk_ode.kernel_fn` on a
*fixed* time grid and Mehler order, as a pure JAX function of the hyperparameters
``{"sigma_w", "sigma_u", "sigma_v", "T"}``: it runs under ``jax.jit`` and has exact derivatives
of the grid equations in both modes. Forward mode (``jax.jvp``, ``jax.jacfwd``) differentiates
through the Picard iterations; for reverse mode (``jax.grad``) a custom JVP returns the
forward-mode Jacobian over the four hyperparameters times their tangents, which is linear and so
transposable: a gradient costs about five kernel evaluations. Derivatives with respect to the
*inputs* are not provided (they come back as NaN, so a mistaken use is loud).

:func:`fit_hyperparameters` fits them to data with optax: the NNGP's Gaussian-process marginal
likelihood, or the validation error of NTK regression (the infinite-time predictor).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import check_depth, check_inputs, fail_if
from .kernels import GETS, Duals, chebyshev_grid, parse_get, resnet_grid
from .kernels.core import traced_pairs, traced_singles
from .kernels.gets import select
from .model import NeuralODE

__all__ = [
    "HYPERPARAMETERS",
    "Fit",
    "fit_hyperparameters",
    "hyperparameters",
    "traceable_kernel_fn",
    "with_hyperparameters",
]

HYPERPARAMETERS = ("sigma_w", "sigma_u", "sigma_v", "T")
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


def _check_hyper(hyper) -> dict:
    if not isinstance(hyper, dict) or sorted(hyper) != sorted(HYPERPARAMETERS):
        got = sorted(hyper) if isinstance(hyper, dict) else type(hyper).__name__
        raise ValueError(f"hyper must be a dict with exactly the keys {HYPERPARAMETERS}, got {got}")
    out = {k: jnp.asarray(v, jnp.result_type(float)) for k, v in hyper.items()}
    bad = [k for k, v in out.items() if v.shape != ()]
    if bad:
        raise ValueError(f"hyper: {bad} must be scalars (vmap over a batch of hyperparameters instead)")
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
    v1, tab1, ok1 = traced_singles(duals, unit, sw, T, scale2 * jnp.sum(x1 * x1, axis=1))
    v2, tab2, ok2 = traced_singles(duals, unit, sw, T, scale2 * jnp.sum(x2 * x2, axis=1))
    s12 = scale2 * (x1 @ x2.T)
    n2 = x2.shape[0]
    rep = lambda a: jnp.broadcast_to(a, (n2,) + a.shape)

    def row(args):
        s_row, va, ta = args
        return traced_pairs(duals, unit, static.head, True, (sw, sv, T), s_row, rep(va), v2, tuple(map(rep, ta)), tab2)

    nngp, ntk, blocks, ok = jax.lax.map(row, (s12, v1, tab1), batch_size=static.row_batch)
    kernels = (nngp, ntk, blocks[..., 0], blocks[..., 1], blocks[..., 2])
    return kernels, jnp.all(ok) & jnp.all(ok1) & jnp.all(ok2)


def _checked_kernels(static: _Static, hyper: dict, x1, x2):
    kernels, ok = _kernels(static, hyper, x1, x2)
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


def traceable_kernel_fn(
    model: NeuralODE,
    depth: int | None = None,
    *,
    nodes: int = 24,
    terms: int = 64,
    row_batch: int = 8,
    on_failure: str = "raise",
) -> Callable:
    """Infinite-width kernels as a pure, differentiable JAX function of the hyperparameters.

    ``kfn(hyper, x1, x2=None, get=("nngp", "ntk"))`` with ``hyper`` a dict of the four scalars
    ``HYPERPARAMETERS`` (:func:`hyperparameters` gives the model's) returns what
    :func:`ntk_ode.kernel_fn` returns for ``with_hyperparameters(model, hyper)``, but on a fixed
    grid: ``nodes`` Chebyshev intervals for the ODE (``depth=None``), or the exact ResNet
    recursion (``depth=L``), and ``terms`` Mehler terms for activations without closed-form
    duals. It works under ``jax.jit`` and ``jax.vmap`` (over hyperparameters), and is
    differentiable in ``hyper`` by ``jax.jvp``/``jax.jacfwd`` and by ``jax.grad`` (a custom JVP;
    docs/theory.md section 11). Derivatives in ``x1``, ``x2`` come back as NaN.

    The grid is not adapted: for the ODE, check the values once against ``kernel_fn(model,
    rtol=...)`` at the hyperparameters of interest (kinked activations converge only
    algebraically in ``nodes``; their ResNet kernels ``depth=L`` are exact).

    Args:
        model: supplies the activation, head and input scaling (its sigma's and T are the
            defaults only through :func:`hyperparameters`).
        depth: None for the Neural ODE, L for the weight-tied ResNet.
        nodes: Chebyshev intervals of the ODE's time grid (>= 2).
        terms: Mehler terms (>= 8; ignored for closed-form duals).
        row_batch: rows of the kernel solved at once (memory ~ row_batch * N2 * nodes^2).
        on_failure: ``"raise"`` (a Picard iteration that does not converge, or a non-finite
            value, raises) or ``"nan"`` (the kernels come back as NaN instead: for optimizers
            whose line search treats NaN as outside the domain).

    Returns:
        ``kfn(hyper, x1, x2=None, get=("nngp", "ntk"))``.

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

    def kfn(hyper, x1, x2=None, get=("nngp", "ntk")):
        names, single = parse_get(get)
        hyper = _check_hyper(hyper)
        x1 = check_inputs(x1, None, "x1")
        x2 = x1 if x2 is None else check_inputs(x2, x1.shape[1], "x2", expected_by="x1 has")
        kernels = dict(zip(GETS, _kernels_jit(static, hyper, x1, x2)))
        return select(kernels, names, single)

    return kfn


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
    """

    model: NeuralODE
    hyper: dict
    noise: float
    objective: np.ndarray
    trace: dict
    grad_norm: float
    converged: bool


def nngp_negative_log_likelihood(k_train, y, noise):
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


def ntk_regression_mse(k_train, k_val_train, y_train, y_val, ridge):
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
    x,
    y,
    objective: Objective = "nngp_marginal_likelihood",
    optimizer=None,
    *,
    steps: int = 50,
    tol: float = 1e-5,
    fit: Sequence[str] = HYPERPARAMETERS,
    x_val=None,
    y_val=None,
    noise: float = 1e-2,
    ridge: float = 1e-6,
    depth: int | None = None,
    nodes: int = 16,
    terms: int = 64,
    log: Callable[[str], Any] | None = None,
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

    Returns:
        A :class:`Fit` (check ``converged``: ``steps`` may end the fit first).

    Raises:
        ValueError: bad arguments.
        FloatingPointError: the objective or its gradient became non-finite at an accepted point.
    """
    import optax

    if objective not in ("nngp_marginal_likelihood", "ntk_validation_mse"):
        raise ValueError(f"objective must be 'nngp_marginal_likelihood' or 'ntk_validation_mse', got {objective!r}")
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    fit = tuple(fit)
    if not fit or any(k not in HYPERPARAMETERS for k in fit) or len(set(fit)) != len(fit):
        raise ValueError(f"fit must be distinct names from {HYPERPARAMETERS}, got {fit!r}")
    for name, val in (("noise", noise), ("ridge", ridge), ("tol", tol)):
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
    return Fit(
        with_hyperparameters(model, {k: hyper[k] for k in fit}),
        hyper,
        fitted_noise,
        np.asarray(objs),
        {k: np.asarray(v) for k, v in trace.items()},
        gnorm,
        gnorm <= tol,
    )


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
