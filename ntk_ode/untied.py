"""Untied ResNets: an independent hidden matrix per layer (docs/theory.md section 12).

    h^0 = input_scale U x,   h^l = h^{l-1} + s sigma_w / sqrt(n) W_l phi(h^{l-1}),  l = 1..L

with the step ``s = T / L`` (the weight-tied ResNet's, ``step="1/L"``) or ``s = sqrt(T / L)``
(``step="1/sqrt(L)"``). Because every W_l is fresh, the infinite-width limit involves only
equal-layer covariances (no two-time coupling): per layer,

    Sigma^l = Sigma^{l-1} + s^2 sigma_w^2 Phi^{l-1},
    Theta^l = Theta^{l-1} (1 + s^2 sigma_w^2 dPhi^{l-1}) + s^2 sigma_w^2 Phi^{l-1}

from Sigma^0 = Theta^0 = input_scale^2 x.x'; NNGP = sigma_v^2 Sigma^L and NTK = sigma_v^2
(Sigma^L + Theta^L) for the linear head (sigma_v^2 Phi^L and sigma_v^2 (Phi^L + dPhi^L Theta^L)
for head "phi"). As L -> infinity with ``step="1/L"`` every increment is O(1/L^2), so the kernels
tend to the depth-0 ones like 1/L; with ``step="1/sqrt(L)"`` they tend to the solution of
``dSigma/dt = sigma_w^2 Phi``, ``dTheta/dt = sigma_w^2 (Phi + dPhi Theta)`` on [0, T].
"""

from __future__ import annotations

import math
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp

from ._checks import check_inputs, fail_if
from .kernels import GETS, Duals, parse_get
from .kernels.gets import select
from .model import NeuralODE, Params

__all__ = ["STEPS", "UntiedResNet", "untied_kernel"]

Step = Literal["1/L", "1/sqrt(L)"]
STEPS = ("1/L", "1/sqrt(L)")
_LIMIT_STEPS = 4096  # RK4 steps of the 1/sqrt(L) limit's ODE (then Richardson: error ~ h^5)


class UntiedResNet(eqx.Module):
    """A ResNet of depth L with independent hidden weights W_1..W_L (docs/theory.md section 12).

    Args:
        model: the weight-tied model whose activation, T, sigma's, head and input scaling it
            shares.
        depth: L >= 1.
        step: ``"1/L"`` (step T / L, as the tied ResNet) or ``"1/sqrt(L)"`` (step sqrt(T / L)).
    """

    model: NeuralODE = eqx.field(static=True)
    depth: int = eqx.field(static=True)
    step: str = eqx.field(static=True)

    def __init__(self, model: NeuralODE, depth: int, step: Step = "1/L"):
        if isinstance(depth, bool) or int(depth) != depth or depth < 1:
            raise ValueError(f"depth must be a positive integer, got {depth!r}")
        if step not in STEPS:
            raise ValueError(f"step must be one of {STEPS}, got {step!r}")
        self.model, self.depth, self.step = model, int(depth), step

    @property
    def step_size(self) -> float:
        """The residual step ``s``: T / L or sqrt(T / L)."""
        return step_size(self.model.T, self.depth, self.step)

    def init(self, key: jax.Array, d: int, width: int, dtype: Any = None) -> Params:
        """Draw parameters with i.i.d. N(0, 1) entries.

        Args:
            key: a PRNG key.
            d: input dimension.
            width: hidden width n.
            dtype: float dtype (default: JAX's default float).

        Returns:
            ``{"U": (n, d), "W": (L, n, n), "v": (n,)}``.
        """
        p = self.model.init(key, d, width, dtype)
        kw = jax.random.fold_in(key, 1)
        p["W"] = jax.random.normal(kw, (self.depth, int(width), int(width)), p["U"].dtype)
        return p

    def apply(self, params: Params, x) -> jax.Array:
        """Outputs f(x) for a batch (pure JAX; works under jit, vmap and grad).

        Args:
            params: ``{"U", "W" (L, n, n), "v"}``.
            x: inputs (N, d).

        Returns:
            (N,) outputs.

        Raises:
            ValueError: bad inputs or a W that is not (L, n, n).
        """
        x = check_inputs(x, params["U"].shape[1], "x", expected_by="params['U'] has")
        W = params["W"]
        if W.ndim != 3 or W.shape[0] != self.depth:
            raise ValueError(f"params['W'] must have shape ({self.depth}, n, n), got {tuple(W.shape)}")
        m = self.model
        h0 = m.embed(params, x)
        c = self.step_size * m.sigma_w / math.sqrt(W.shape[-1])

        def layer(h, Wl):
            return h + c * m.activation.fn(h) @ Wl.T, None

        hL, _ = jax.lax.scan(layer, h0, W)
        return m.readout(params["v"], hL)


def step_size(T: float, depth: int, step: str) -> float:
    """The untied ResNet's residual step: ``T / depth`` or ``sqrt(T / depth)``.

    Args:
        T: time horizon.
        depth: L.
        step: "1/L" or "1/sqrt(L)".

    Returns:
        The step s.
    """
    return T / depth if step == "1/L" else math.sqrt(T / depth)


def _layer(duals: Duals, c2, S11, S22, S12, Th11, Th22, Th12):
    """One untied layer of the covariance and NTK recursions (c2 = s^2 sigma_w^2)."""
    t1, t2 = duals.tables(S11), duals.tables(S22)
    diag = lambda f, S, t: jnp.diagonal(f(S, S, jnp.diag(S), t, t))
    P11, P22 = diag(duals.phi, S11, t1), diag(duals.phi, S22, t2)
    D11, D22 = diag(duals.dphi, S11, t1), diag(duals.dphi, S22, t2)
    P12, D12 = duals.phi(S11, S22, S12, t1, t2), duals.dphi(S11, S22, S12, t1, t2)
    return (
        S11 + c2 * P11,
        S22 + c2 * P22,
        S12 + c2 * P12,
        Th11 * (1 + c2 * D11) + c2 * P11,
        Th22 * (1 + c2 * D22) + c2 * P22,
        Th12 * (1 + c2 * D12) + c2 * P12,
    )


def _readout(duals: Duals, model: NeuralODE, state):
    S11, S22, S12, Th11, Th22, Th12 = state
    sv2 = model.sigma_v**2
    if model.head == "phi":
        t1, t2 = duals.tables(S11), duals.tables(S22)
        P, D = duals.phi(S11, S22, S12, t1, t2), duals.dphi(S11, S22, S12, t1, t2)
        return sv2 * P, sv2 * (P + D * Th12)
    return sv2 * S12, sv2 * (S12 + Th12)


def _initial(model: NeuralODE, x1, x2):
    c2 = model.input_scale(x1.shape[1]) ** 2
    S11, S22, S12 = c2 * jnp.sum(x1 * x1, 1), c2 * jnp.sum(x2 * x2, 1), c2 * x1 @ x2.T
    return (S11, S22, S12, S11, S22, S12)


def _depth_kernels(duals, model, x1, x2, depth, s):
    c2 = (s * model.sigma_w) ** 2
    state, _ = jax.lax.scan(lambda st, _: (_layer(duals, c2, *st), None), _initial(model, x1, x2), None, length=depth)
    return _readout(duals, model, state)


def _ode_limit_kernels(duals, model, x1, x2, steps):
    """RK4 for dSigma/dt = sigma_w^2 Phi, dTheta/dt = sigma_w^2 (Phi + dPhi Theta) at ``steps`` and
    ``steps / 2`` steps, Richardson-combined (RK4: error ~ h^4)."""
    c2 = model.sigma_w**2

    def rhs(st):
        new = _layer(duals, c2, *st)
        return tuple(n - o for n, o in zip(new, st))

    def rk4(n):
        h = model.T / n

        def step(st, _):
            add = lambda a, k, f: tuple(x + f * y for x, y in zip(a, k))
            k1 = rhs(st)
            k2 = rhs(add(st, k1, h / 2))
            k3 = rhs(add(st, k2, h / 2))
            k4 = rhs(add(st, k3, h))
            return tuple(x + h / 6 * (a + 2 * b + 2 * c + d) for x, a, b, c, d in zip(st, k1, k2, k3, k4)), None

        st, _ = jax.lax.scan(step, _initial(model, x1, x2), None, length=n)
        return _readout(duals, model, st)

    fine, coarse = rk4(steps), rk4(steps // 2)
    return tuple((16 * f - c) / 15 for f, c in zip(fine, coarse))


def untied_kernel(
    model: NeuralODE,
    x1,
    x2=None,
    get=("nngp", "ntk"),
    *,
    depth: int | None = None,
    step: Step = "1/L",
    terms: int = 192,
):
    """Infinite-width NNGP and NTK of the untied ResNet (docs/theory.md section 12).

    Pure JAX (works under ``jax.jit`` with static options, and ``jax.vmap``).

    Args:
        model: activation, T, sigma's, head and input scaling.
        x1: inputs (N1, d).
        x2: inputs (N2, d), or None for x1.
        get: "nngp" or "ntk" or a tuple of them (a namedtuple is returned, as by ``kernel_fn``).
        depth: L, or None for the limit L -> infinity (depth 0's kernels for ``step="1/L"``; the
            ODE of the module docstring, by Richardson-combined RK4, for ``"1/sqrt(L)"``).
        step: "1/L" or "1/sqrt(L)".
        terms: Mehler terms for activations without closed-form duals.

    Returns:
        The kernel(s), (N1, N2) each.

    Raises:
        ValueError: bad arguments.
    """
    if depth is not None and (isinstance(depth, bool) or int(depth) != depth or depth < 1):
        raise ValueError(f"depth must be None or a positive integer, got {depth!r}")
    if step not in STEPS:
        raise ValueError(f"step must be one of {STEPS}, got {step!r}")
    names, single = parse_get(get, GETS[:2])
    x1 = check_inputs(x1, None, "x1")
    x2 = x1 if x2 is None else check_inputs(x2, x1.shape[1], "x2", expected_by="x1 has")
    duals = Duals(model.activation, int(terms))
    if depth is not None:
        nngp, ntk = _depth_kernels(duals, model, x1, x2, int(depth), step_size(model.T, int(depth), step))
    elif step == "1/L":
        nngp, ntk = _depth_kernels(duals, model, x1, x2, 1, 0.0)  # no increment: depth 0
    else:
        nngp, ntk = _ode_limit_kernels(duals, model, x1, x2, _LIMIT_STEPS)
    out = dict(nngp=nngp, ntk=ntk)
    finite = jnp.all(jnp.isfinite(nngp)) & jnp.all(jnp.isfinite(ntk))
    out = fail_if(out, ~finite, "untied_kernel: non-finite kernel (sigma_w^2 T too large?)", FloatingPointError)
    return select(out, names, single)
