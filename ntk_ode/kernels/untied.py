"""The untied recursion: infinite-width kernels of ResNets with a fresh W per layer
(docs/theory.md section 12), with certified duals and an error estimate.

Because every W_l is fresh, only equal-layer covariances enter: per layer, with c2 = s^2 sigma_w^2,

    Sigma^l = Sigma^{l-1} + c2 Phi^{l-1},   Theta^l = Theta^{l-1} (1 + c2 dPhi^{l-1}) + c2 Phi^{l-1}

from Sigma^0 = Theta^0 = input_scale^2 x.x'. The limit of step sqrt(T / L) is the ODE
``dSigma/dt = sigma_w^2 Phi``, ``dTheta/dt = sigma_w^2 (Phi + dPhi Theta)``, solved by RK4 at two
step sizes and Richardson-combined.

:func:`recursion` is pure JAX (jit, vmap) for given :class:`~ntk_ode.kernels.duals.Duals`.
:func:`certified` chooses the duals as the engine does everywhere: the fewest Mehler terms whose
Parseval certificate holds at every variance the recursion visits, else quadrature duals, and
measures how the kernels respond to a dual error; it returns the kernels with an estimate of
their error (duals, the limit's time steps, rounding).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from .adapt import pick_duals
from .duals import Duals, mehler_certificate, quad_certificate

if TYPE_CHECKING:
    from ..model import NeuralODE

__all__ = ["LIMIT_STEPS", "STEPS", "certified", "recursion", "step_size"]

STEPS = ("1/L", "1/sqrt(L)")
LIMIT_STEPS = 4096  # RK4 steps of the 1/sqrt(L) limit's ODE (then Richardson: error ~ h^5)
_QUAD_LIMIT_STEPS = 256  # with quadrature duals (each step costs ~7e4 evaluations per pair)


def step_size(T: float, depth: int, step: str) -> float:
    """The untied ResNet's residual step: ``T / depth`` or ``sqrt(T / depth)``.

    Args:
        T: time horizon.
        depth: L.
        step: "1/L" or "1/sqrt(L)".

    Returns:
        The step s.
    """
    return T / depth if step == "1/L" else (T / depth) ** 0.5


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


def _readout(duals: Duals, model, state):
    S11, S22, S12, Th11, Th22, Th12 = state
    sv2 = model.sigma_v**2
    if model.head == "phi":
        t1, t2 = duals.tables(S11), duals.tables(S22)
        P, D = duals.phi(S11, S22, S12, t1, t2), duals.dphi(S11, S22, S12, t1, t2)
        return sv2 * P, sv2 * (P + D * Th12)
    return sv2 * S12, sv2 * (S12 + Th12)


def _initial(model, x1, x2):
    c2 = model.input_scale(x1.shape[1]) ** 2
    S11, S22, S12 = c2 * jnp.sum(x1 * x1, 1), c2 * jnp.sum(x2 * x2, 1), c2 * x1 @ x2.T
    return (S11, S22, S12, S11, S22, S12)


def _depth(duals, model, x1, x2, depth, s):
    c2 = (s * model.sigma_w) ** 2
    state, _ = jax.lax.scan(lambda st, _: (_layer(duals, c2, *st), None), _initial(model, x1, x2), None, length=depth)
    return state


def _rk4(duals, model, x1, x2, n):
    c2 = model.sigma_w**2
    h = model.T / n

    def rhs(st):
        new = _layer(duals, c2, *st)
        return tuple(a - b for a, b in zip(new, st))

    def step(st, _):
        add = lambda a, k, f: tuple(x + f * y for x, y in zip(a, k))
        k1 = rhs(st)
        k2 = rhs(add(st, k1, h / 2))
        k3 = rhs(add(st, k2, h / 2))
        k4 = rhs(add(st, k3, h))
        return tuple(x + h / 6 * (a + 2 * b + 2 * c + d) for x, a, b, c, d in zip(st, k1, k2, k3, k4)), None

    st, _ = jax.lax.scan(step, _initial(model, x1, x2), None, length=n)
    return st


@functools.partial(jax.jit, static_argnums=(0, 1, 4, 5, 6))
def recursion(
    duals: Duals,
    model: NeuralODE,
    x1: jax.Array,
    x2: jax.Array,
    depth: int | None,
    step: str,
    limit_steps: int = LIMIT_STEPS,
) -> tuple[jax.Array, jax.Array, jax.Array, tuple[jax.Array, ...]]:
    """NNGP and NTK of the untied ResNet for the given duals (pure JAX), with the largest
    variances visited and an estimate of the time-step error (0 at finite depth).

    Args:
        duals: how Phi and dPhi are evaluated.
        model: activation, T, sigma's, head and input scaling.
        x1: inputs (N1, d).
        x2: inputs (N2, d).
        depth: L, or None for the limit L -> infinity.
        step: "1/L" or "1/sqrt(L)".
        limit_steps: RK4 steps of the ``"1/sqrt(L)"`` limit (even).

    Returns:
        ``(nngp, ntk, vmax, time_error)``: (N1, N2) each, the largest self-variance of the last
        layer (the variances grow layer by layer), and per kernel the bound
        ``|K(n) - K(n/2)| / 15`` of the Richardson-combined RK4 (0 for finite depth).
    """
    zero = jnp.zeros((), x1.dtype)
    if depth is not None:
        st = _depth(duals, model, x1, x2, int(depth), step_size(model.T, int(depth), step))
    elif step == "1/L":
        st = _depth(duals, model, x1, x2, 1, 0.0)  # no increment: depth 0
    else:
        fine_st, coarse_st = _rk4(duals, model, x1, x2, limit_steps), _rk4(duals, model, x1, x2, limit_steps // 2)
        fine, coarse = _readout(duals, model, fine_st), _readout(duals, model, coarse_st)
        nngp, ntk = ((16 * f - c) / 15 for f, c in zip(fine, coarse))
        errs = tuple(jnp.max(jnp.abs(f - c)) / 15 for f, c in zip(fine, coarse))
        vmax = jnp.maximum(jnp.max(fine_st[0]), jnp.max(fine_st[1]))
        return nngp, ntk, vmax, errs
    nngp, ntk = _readout(duals, model, st)
    return nngp, ntk, jnp.maximum(jnp.max(st[0]), jnp.max(st[1])), (zero, zero)


def _variances(vmin: float, vmax: float) -> np.ndarray:
    """Variances at which the duals are certified: geometric over [vmin, vmax] (the recursion's
    variances grow monotonically from the inputs' to the last layer's), 48 points and the ends."""
    lo, hi = max(vmin, 1e-12), max(vmax, vmin, 1e-12)
    return np.unique(np.concatenate([np.geomspace(lo, hi, 48), [vmin, vmax]]))


def certified(
    model: NeuralODE, x1: jax.Array, x2: jax.Array, depth: int | None, step: str, terms: int, rtol: float
) -> tuple[jax.Array, jax.Array, dict, float]:
    """The untied kernels with certified duals and their error estimate (eager).

    The duals: the engine's ladder (:func:`ntk_ode.kernels.adapt.pick_duals`) with the Parseval
    certificate (quadrature's for quadrature duals) below ``1e-3 rtol`` at every variance the
    recursion visits. The estimate: 4 times the certificate times the
    measured response of the kernels to a relative dual perturbation, plus the limit's time-step
    bound and rounding.

    Args:
        model: activation, T, sigma's, head and input scaling.
        x1: inputs (N1, d).
        x2: inputs (N2, d).
        depth: L or None.
        step: "1/L" or "1/sqrt(L)".
        terms: the first Mehler count tried.
        rtol: relative target.

    Returns:
        ``(nngp, ntk, errors {"nngp", "ntk"}, delta)``: the kernels, their estimated max abs
        errors, and the relative dual error bound.
    """
    eps = float(jnp.finfo(x1.dtype).eps)
    X = jnp.concatenate([x1, x2])
    vmin = float(jnp.min(_initial(model, X, X)[0]))
    steps_of = lambda duals: _QUAD_LIMIT_STEPS if duals.quad else LIMIT_STEPS

    def certify_fn(duals):
        # the largest variance from each input's own (1 x 1) recursion: the diagonal of the full
        # one at a fraction of its cost
        diag = lambda r: recursion(duals, model, r[None], r[None], depth, step, steps_of(duals))[2]
        v = _variances(vmin, float(jnp.max(jax.vmap(diag)(X))))
        return quad_certificate(duals, v) if duals.quad else mehler_certificate(duals, v)

    duals, delta = pick_duals(Duals(model.activation, int(terms)), certify_fn, max(1e-3 * rtol, 1e3 * eps))
    steps = steps_of(duals)
    nngp, ntk, _, time_err = recursion(duals, model, x1, x2, depth, step, steps)
    errs = {}
    if delta > 0:
        eta = 1e-6
        up = recursion(dataclasses.replace(duals, perturb=eta), model, x1, x2, depth, step, steps)
        sens = [float(jnp.max(jnp.abs(u - k))) / eta for u, k in zip(up[:2], (nngp, ntk))]
    else:
        sens = [0.0, 0.0]
    for i, (name, k) in enumerate((("nngp", nngp), ("ntk", ntk))):
        scale = float(jnp.max(jnp.abs(k)))
        errs[name] = 4.0 * delta * sens[i] + float(time_err[i]) + 64 * eps * scale
    return nngp, ntk, errs, delta
