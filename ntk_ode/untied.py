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
import warnings
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp

from ._checks import check_inputs, default_rtol, fail_if, is_traced, positive_int
from .kernels import GETS, Duals, parse_get
from .kernels.gets import select
from .kernels.untied import STEPS, certified, recursion, step_size
from .model import NeuralODE, Params

__all__ = ["STEPS", "UntiedResNet", "step_size", "untied_kernel"]

Step = Literal["1/L", "1/sqrt(L)"]


class UntiedResNet(eqx.Module):
    """A ResNet of depth L with independent hidden weights W_1..W_L (docs/theory.md section 12).

    Args:
        model: the weight-tied model whose activation, T, sigma's, head and input scaling it
            shares.
        depth: L >= 1.
        step: ``"1/L"`` (step T / L, as the tied ResNet) or ``"1/sqrt(L)"`` (step sqrt(T / L)).
    """

    model: NeuralODE  # its hyperparameters are leaves, as in NeuralODE
    depth: int = eqx.field(static=True)
    step: str = eqx.field(static=True)

    def __init__(self, model: NeuralODE, depth: int, step: Step = "1/L"):
        positive_int("depth", depth)
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

    def apply(self, params: Params, x: Any) -> jax.Array:
        """Outputs f(x) for a batch (pure JAX; works under jit, vmap and grad).

        Args:
            params: ``{"U", "W" (L, n, n), "v"}``.
            x: inputs (N, d).

        Returns:
            (N,) outputs.

        Raises:
            ValueError: bad inputs or a W that is not (L, n, n).
            FloatingPointError: the output is not finite (blow-up).
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
        out = m.readout(params["v"], hL)
        return fail_if(
            out,
            jnp.logical_not(jnp.all(jnp.isfinite(out))),
            "UntiedResNet.apply: the output is not finite: the hidden state overflowed (lower sigma_w, T "
            "or the input norms)",
            FloatingPointError,
        )


def untied_kernel(
    model: NeuralODE,
    x1: Any,
    x2: Any = None,
    get: str | tuple = ("nngp", "ntk"),
    *,
    depth: int | None = None,
    step: Step = "1/L",
    terms: int = 192,
    rtol: float | None = None,
    with_error: bool = False,
) -> Any:
    """Infinite-width NNGP and NTK of the untied ResNet (docs/theory.md section 12).

    Called eagerly, the duals are certified as in :func:`ntk_ode.kernel_fn`: the fewest Mehler
    terms (from ``terms`` up the engine's ladder) whose Parseval certificate holds at every
    variance the recursion visits, else quadrature duals; the estimated max abs errors (duals,
    the limit's RK4 steps, rounding) come back with ``with_error=True``, and a RuntimeWarning
    says when they exceed ``rtol``. Under ``jax.jit``/``jax.vmap`` (traced inputs) no host
    choice is possible: ``terms`` Mehler terms are used as given and ``with_error`` is refused;
    check such a setting once eagerly.

    Args:
        model: activation, T, sigma's, head and input scaling.
        x1: inputs (N1, d).
        x2: inputs (N2, d), or None for x1.
        get: "nngp" or "ntk" or a tuple of them (a namedtuple is returned, as by ``kernel_fn``).
        depth: L, or None for the limit L -> infinity (depth 0's kernels for ``step="1/L"``; the
            ODE of the module docstring, by Richardson-combined RK4, for ``"1/sqrt(L)"``).
        step: "1/L" or "1/sqrt(L)".
        terms: Mehler terms for activations without closed-form duals (the first tried).
        rtol: target relative accuracy (default 1e-8 in float64, 1e-5 in float32).
        with_error: also return the estimated max abs errors, in the same form as the kernels.

    Returns:
        The kernel(s), (N1, N2) each; with ``with_error``, ``(kernels, errors)``.

    Raises:
        ValueError: bad arguments, or ``with_error`` under tracing.
        FloatingPointError: a kernel is not finite.

    Warns:
        RuntimeWarning: the error estimate exceeds ``rtol``.
    """
    if depth is not None and (isinstance(depth, bool) or int(depth) != depth or depth < 1):
        raise ValueError(f"depth must be None or a positive integer, got {depth!r}")
    if step not in STEPS:
        raise ValueError(f"step must be one of {STEPS}, got {step!r}")
    if isinstance(terms, bool) or int(terms) != terms or terms < 8:
        raise ValueError(f"terms must be an integer >= 8, got {terms!r}")
    if rtol is not None and (isinstance(rtol, bool) or not (0 < float(rtol) < 1)):
        raise ValueError(f"rtol must be a number in (0, 1), got {rtol!r}")
    names, single = parse_get(get, GETS[:2])
    x1 = check_inputs(x1, None, "x1")
    x2 = x1 if x2 is None else check_inputs(x2, x1.shape[1], "x2", expected_by="x1 has")
    depth = None if depth is None else int(depth)
    tol = rtol if rtol is not None else default_rtol(x1.dtype)
    if is_traced(x1, x2):
        if with_error:
            raise ValueError("with_error: untied_kernel certifies its duals eagerly; call it outside jit/vmap")
        nngp, ntk, _, _ = recursion(Duals(model.activation, int(terms)), model, x1, x2, depth, step)
        errors, delta = None, 0.0
    else:
        nngp, ntk, errors, delta = certified(model, x1, x2, depth, step, int(terms), tol)
    out = dict(nngp=nngp, ntk=ntk)
    finite = jnp.all(jnp.isfinite(nngp)) & jnp.all(jnp.isfinite(ntk))
    out = fail_if(out, ~finite, "untied_kernel: non-finite kernel (sigma_w^2 T too large?)", FloatingPointError)
    if errors is None:
        return select(out, names, single)
    scale = {g: float(jnp.max(jnp.abs(out[g]))) for g in names}
    if any(errors[g] > tol * scale[g] for g in names):
        warnings.warn(
            f"untied_kernel: rtol={tol:g} not met: estimated max abs error "
            f"{', '.join(f'{g} {errors[g]:.2e}' for g in names)} (relative dual error bound {delta:.1e}, "
            f"activation {model.activation.name!r})",
            RuntimeWarning,
            stacklevel=2,
        )
    k = select(out, names, single)
    return (k, select(errors, names, single)) if with_error else k
