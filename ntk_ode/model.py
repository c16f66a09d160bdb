"""The Neural ODE of THEORY.md section 1, its weight-tied Euler ResNet, and their trajectories.

    h_0   = sigma_u / sqrt(d) U x                 (input_scaling "sqrt_d"; "none": sigma_u U x)
    dh/dt = sigma_w / sqrt(n) W phi(h_t),  t in [0, T]   (one W for all t)
    f(x)  = sigma_v / sqrt(n) v . h_T  (head "linear")  or  sigma_v / sqrt(n) v . phi(h_T)  ("phi")

``depth=None`` everywhere means the continuous model, solved with diffrax; ``depth=L`` the
weight-tied ResNet ``h^l = h^{l-1} + dt sigma_w / sqrt(n) W phi(h^{l-1})``, ``dt = T / L``,
computed exactly. A batch of inputs is solved as one ODE with state ``(N, n)`` (one matrix
product per stage), compiled once per shape.
"""

from __future__ import annotations

import dataclasses
import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._checks import check_depth, check_inputs
from .activations import Activation, get_activation

__all__ = ["NeuralODE", "Solver", "RK4", "SOLVERS", "check_params", "check_inputs"]

HEADS = ("linear", "phi")
INPUT_SCALINGS = ("sqrt_d", "none")


# ----------------------------------------------------------------------------- solvers

_rk4_tableau = diffrax.ButcherTableau(
    a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
    b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
    b_error=np.zeros(4),
    c=np.array([0.5, 0.5, 1.0]),
)


class RK4(diffrax.AbstractERK):
    """The classical fourth-order Runge-Kutta method (fixed steps only; no error estimate)."""

    tableau = _rk4_tableau
    interpolation_cls = staticmethod(
        lambda *, t0, t1, y0, y1, k: diffrax.LocalLinearInterpolation(t0=t0, t1=t1, y0=y0, y1=y1)
    )

    def order(self, terms):
        del terms
        return 4


SOLVERS = {
    "euler": (diffrax.Euler, False),
    "heun": (diffrax.Heun, True),
    "midpoint": (diffrax.Midpoint, True),
    "rk4": (RK4, False),
    "tsit5": (diffrax.Tsit5, True),
    "dopri5": (diffrax.Dopri5, True),
    "dopri8": (diffrax.Dopri8, True),
}


@dataclasses.dataclass(frozen=True)
class Solver:
    """How to integrate an ODE: a method, fixed ``steps`` or tolerances, and a step budget.

    ``steps=None`` selects adaptive step-size control with ``rtol``/``atol`` (defaults 1e-10 in
    float64 and 1e-6 in float32), available for heun, midpoint, tsit5, dopri5 and dopri8.
    Euler and RK4 carry no error estimate and need ``steps``.
    """

    name: str = "dopri8"
    steps: int | None = None
    rtol: float | None = None
    atol: float | None = None
    max_steps: int = 16384
    forward_mode: bool = False  # differentiate the solve in forward mode too (diffrax.DirectAdjoint)

    def __post_init__(self):
        if self.name not in SOLVERS:
            raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {self.name!r}")
        if self.steps is not None and (int(self.steps) != self.steps or self.steps < 1):
            raise ValueError(f"steps must be a positive integer or None, got {self.steps!r}")
        if self.steps is None and not SOLVERS[self.name][1]:
            raise ValueError(
                f"solver {self.name!r} has no error estimate: pass steps=<int> for fixed steps"
            )
        for k in ("rtol", "atol"):
            v = getattr(self, k)
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{k} must be a positive finite number, got {v!r}")
        if int(self.max_steps) != self.max_steps or self.max_steps < 1:
            raise ValueError(f"max_steps must be a positive integer, got {self.max_steps!r}")

    @classmethod
    def make(cls, solver=None, **kw) -> "Solver":
        """Build from a Solver, a name, or None (the default), overriding fields given in ``kw``."""
        kw = {k: v for k, v in kw.items() if v is not None}
        if isinstance(solver, Solver):
            return dataclasses.replace(solver, **kw) if kw else solver
        if solver is None:
            return cls(**kw)
        if isinstance(solver, str):
            return cls(name=solver, **kw)
        raise ValueError(f"solver must be a Solver, a name in {sorted(SOLVERS)} or None, got {solver!r}")

    def tolerances(self, dtype) -> tuple[float, float]:
        default = 1e-10 if jnp.dtype(dtype) == jnp.float64 else 1e-6
        return (self.rtol or default, self.atol or default)

    def diffrax_solver(self):
        return SOLVERS[self.name][0]()

    def controller(self, dtype):
        if self.steps is not None:
            return diffrax.ConstantStepSize()
        rtol, atol = self.tolerances(dtype)
        return diffrax.PIDController(rtol=rtol, atol=atol)

    def dt0(self, t0, t1):
        return None if self.steps is None else (t1 - t0) / self.steps


# ----------------------------------------------------------------------------- validation


def _is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def check_params(params) -> tuple[int, int]:
    """Validate ``{"U": (n, d), "W": (n, n), "v": (n,)}``; return ``(n, d)``."""
    if not isinstance(params, dict) or set(params) != {"U", "W", "v"}:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"params must be a dict with keys 'U', 'W', 'v', got {got}")
    U, W, v = params["U"], params["W"], params["v"]
    if jnp.ndim(U) != 2:
        raise ValueError(f"params['U'] must have shape (n, d), got {jnp.shape(U)}")
    n, d = jnp.shape(U)
    if jnp.shape(W) != (n, n):
        raise ValueError(f"params['W'] must have shape (n, n) = ({n}, {n}) to match U, got {jnp.shape(W)}")
    if jnp.shape(v) != (n,):
        raise ValueError(f"params['v'] must have shape (n,) = ({n},) to match U, got {jnp.shape(v)}")
    if not any(_is_traced(p) for p in (U, W, v)):
        for k in ("U", "W", "v"):
            if not np.all(np.isfinite(np.asarray(params[k]))):
                raise ValueError(f"params['{k}'] contains non-finite values")
    return int(n), int(d)


# ----------------------------------------------------------------------------- the model


class NeuralODE(eqx.Module):
    """Immutable configuration of the weight-tied Neural ODE (THEORY.md section 1).

    Args:
        activation: a registered name (``ntk_ode.activations.available_activations()``) or an
            :class:`~ntk_ode.activations.Activation`.
        T: time horizon (> 0).
        sigma_w: scale of the shared hidden weight W (> 0).
        sigma_u: scale of the input weight U (> 0).
        sigma_v: scale of the readout weight v (> 0).
        head: ``"linear"`` (``v . h_T``) or ``"phi"`` (``v . phi(h_T)``).
        input_scaling: ``"sqrt_d"`` (divide by sqrt(d)) or ``"none"``.

    All fields are static: the model is hashable and can be closed over or passed to ``jit``
    as a static argument.
    """

    activation: Activation = eqx.field(static=True)
    T: float = eqx.field(static=True)
    sigma_w: float = eqx.field(static=True)
    sigma_u: float = eqx.field(static=True)
    sigma_v: float = eqx.field(static=True)
    head: str = eqx.field(static=True)
    input_scaling: str = eqx.field(static=True)

    def __init__(
        self,
        activation: str | Activation = "softplus",
        T: float = 1.0,
        sigma_w: float = 1.0,
        sigma_u: float = 1.0,
        sigma_v: float = 1.0,
        head: str = "linear",
        input_scaling: str = "sqrt_d",
    ):
        self.activation = get_activation(activation)
        for name, val in (("T", T), ("sigma_w", sigma_w), ("sigma_u", sigma_u), ("sigma_v", sigma_v)):
            if isinstance(val, bool) or not isinstance(val, (int, float, np.floating, np.integer)):
                raise ValueError(f"{name} must be a real number, got {val!r}")
            if not (math.isfinite(val) and val > 0):
                raise ValueError(f"{name} must be finite and > 0, got {val!r}")
        self.T, self.sigma_w, self.sigma_u, self.sigma_v = float(T), float(sigma_w), float(sigma_u), float(sigma_v)
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if input_scaling not in INPUT_SCALINGS:
            raise ValueError(f"input_scaling must be one of {INPUT_SCALINGS}, got {input_scaling!r}")
        self.head = head
        self.input_scaling = input_scaling

    # -- parameters ---------------------------------------------------------------------------

    def init(self, key, d: int, width: int, dtype=None) -> dict:
        """``{"U": (n, d), "W": (n, n), "v": (n,)}`` with i.i.d. N(0, 1) entries."""
        for name, val in (("d", d), ("width", width)):
            if isinstance(val, bool) or int(val) != val or val < 1:
                raise ValueError(f"{name} must be a positive integer, got {val!r}")
        dtype = dtype or jnp.result_type(float)
        ku, kw, kv = jax.random.split(key, 3)
        n, d = int(width), int(d)
        return {
            "U": jax.random.normal(ku, (n, d), dtype),
            "W": jax.random.normal(kw, (n, n), dtype),
            "v": jax.random.normal(kv, (n,), dtype),
        }

    # -- the maps of section 1 -----------------------------------------------------------------

    def input_scale(self, d: int) -> float:
        return self.sigma_u / math.sqrt(d) if self.input_scaling == "sqrt_d" else self.sigma_u

    def embed(self, params, x):
        """``h_0``: (N, d) -> (N, n)."""
        return self.input_scale(x.shape[-1]) * x @ params["U"].T

    def vector_field(self, W, h):
        """``sigma_w / sqrt(n) W phi(h)`` for a batch ``h`` of shape (..., n)."""
        return (self.sigma_w / math.sqrt(W.shape[0])) * self.activation.fn(h) @ W.T

    def readout(self, v, hT):
        """The head: (N, n) -> (N,)."""
        z = self.activation.fn(hT) if self.head == "phi" else hT
        return (self.sigma_v / math.sqrt(v.shape[0])) * z @ v

    # -- solves ---------------------------------------------------------------------------------

    def resnet_states(self, params, x, depth: int):
        """All ResNet states ``h^0..h^L``: (L + 1, N, n)."""
        dt = self.T / depth
        W = params["W"]

        def step(h, _):
            h = h + dt * self.vector_field(W, h)
            return h, h

        h0 = self.embed(params, x)
        _, hs = jax.lax.scan(step, h0, None, length=depth)
        return jnp.concatenate([h0[None], hs], axis=0)

    def _resnet_final(self, params, x, depth):
        dt = self.T / depth
        W = params["W"]
        return jax.lax.fori_loop(0, depth, lambda _, h: h + dt * self.vector_field(W, h), self.embed(params, x))

    def _diffeqsolve(self, W, h0, solver: Solver, saveat, t0, t1, throw, terms=None, y0=None):
        term = terms or diffrax.ODETerm(lambda t, h, W: self.vector_field(W, h))
        dtype = h0.dtype  # times in the state's precision keep float32 solves in float32
        t0, t1 = jnp.asarray(t0, dtype), jnp.asarray(t1, dtype)
        return diffrax.diffeqsolve(
            term,
            solver.diffrax_solver(),
            t0,
            t1,
            solver.dt0(t0, t1),
            h0 if y0 is None else y0,
            args=W,
            saveat=saveat,
            stepsize_controller=solver.controller(dtype),
            max_steps=solver.max_steps if solver.steps is None else max(solver.max_steps, solver.steps),
            throw=throw,
            adjoint=diffrax.DirectAdjoint() if solver.forward_mode else diffrax.RecursiveCheckpointAdjoint(),
        )

    def final_state(self, params, x, depth=None, solver=None, *, throw=True):
        """``h_T`` (depth=None) or ``h^L``; with ``throw=False`` also returns the solve's success flag."""
        if depth is not None:
            hT = self._resnet_final(params, x, depth)
            return hT if throw else (hT, jnp.asarray(True))
        sol = self._diffeqsolve(params["W"], self.embed(params, x), solver, diffrax.SaveAt(t1=True), 0.0, self.T, throw)
        hT = sol.ys[-1]
        return hT if throw else (hT, sol.result == diffrax.RESULTS.successful)

    def apply(self, params, x, depth: int | None = None, solver=None, *, steps=None, rtol=None, atol=None, max_steps=None):
        """The network output ``f(x)``: (N, d) -> (N,).

        ``depth=None``: the Neural ODE, solved with ``solver`` (default Dopri8 at rtol = atol =
        1e-10 in float64). ``depth=L``: the weight-tied Euler ResNet ``f^L``, exactly.
        Raises ``RuntimeError`` if the solve fails (e.g. exhausts ``max_steps``).
        """
        n, d = check_params(params)
        x = check_inputs(x, d)
        depth = check_depth(depth)
        solver = Solver.make(solver, steps=steps, rtol=rtol, atol=atol, max_steps=max_steps)
        if _is_traced(x) or any(_is_traced(p) for p in params.values()):
            return self.readout(params["v"], self.final_state(params, x, depth, solver))
        y, ok = _apply_jit(self, params, x, depth, solver)
        _raise_if_failed(ok, solver, "forward ODE")
        _raise_if_nonfinite(y, "apply")
        return y

    def trajectory(self, params, x, ts=None, depth=None, solver=None, *, steps=None, rtol=None, atol=None, max_steps=None):
        """Forward states on a time grid: (N, M, n).

        ``depth=L``: all ResNet states ``h^0..h^L`` (``ts`` must be None; M = L + 1).
        ``depth=None``: the ODE solution at the times ``ts`` (ascending, in [0, T]).
        """
        n, d = check_params(params)
        x = check_inputs(x, d)
        depth = check_depth(depth)
        if depth is not None:
            if ts is not None:
                raise ValueError("ts must be None when depth is given (the grid is l = 0..L)")
            return jnp.swapaxes(_resnet_states_jit(self, params, x, depth), 0, 1)
        ts = check_times(ts, self.T)
        solver = Solver.make(solver, steps=steps, rtol=rtol, atol=atol, max_steps=max_steps)
        hs, ok = _trajectory_jit(self, params, x, ts, solver)
        _raise_if_failed(ok, solver, "forward ODE")
        return jnp.swapaxes(hs, 0, 1)


def check_times(ts, T: float):
    if ts is None:
        raise ValueError("ts (the save times) must be given when depth is None")
    ts = jnp.asarray(ts, jnp.result_type(float))
    if ts.ndim != 1 or ts.size < 1:
        raise ValueError(f"ts must be a non-empty 1-d array, got shape {ts.shape}")
    if not bool(jnp.all(jnp.diff(ts) > 0)) or float(ts[0]) < 0 or float(ts[-1]) > T * (1 + 1e-12):
        raise ValueError(f"ts must be strictly increasing within [0, T={T}]")
    return ts


def _raise_if_failed(ok, solver: Solver, what: str):
    if not bool(ok):
        raise RuntimeError(
            f"{what} solve failed ({solver.name}, steps={solver.steps}, max_steps={solver.max_steps}): "
            "the step budget was exhausted or the step size collapsed. Raise max_steps, loosen "
            "rtol/atol, or check for blow-up (e.g. a quadratic activation at large T)."
        )


def _raise_if_nonfinite(y, what: str):
    if not bool(jnp.all(jnp.isfinite(jnp.asarray(y)))):
        raise FloatingPointError(f"{what}: the result is not finite (the ODE blew up?)")


@eqx.filter_jit
def _apply_jit(model, params, x, depth, solver):
    hT, ok = model.final_state(params, x, depth, solver, throw=False)
    return model.readout(params["v"], hT), ok


@eqx.filter_jit
def _resnet_states_jit(model, params, x, depth):
    return model.resnet_states(params, x, depth)


@eqx.filter_jit
def _trajectory_jit(model, params, x, ts, solver):
    sol = model._diffeqsolve(params["W"], model.embed(params, x), solver, diffrax.SaveAt(ts=ts), 0.0, model.T, False)
    return sol.ys, sol.result == diffrax.RESULTS.successful
