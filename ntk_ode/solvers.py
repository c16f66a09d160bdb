"""How the Neural ODE's forward and adjoint ODEs are integrated (docs/theory.md section 1).

:class:`Solver` holds a method, fixed steps or tolerances and a step budget; it is an option of
``apply``, ``grad`` and ``empirical_ntk``, not a different API. ``depth=L`` (the weight-tied Euler
ResNet) is the same model on a fixed grid and needs no solver. :func:`check_times` validates save
times and :func:`check_solve` turns a failed or non-finite solve into a loud error, eagerly and
under jit/vmap.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._checks import fail_if, is_traced

__all__ = ["Solver", "RK4", "SOLVERS", "SolverName", "check_times", "check_solve"]

SolverName = Literal["euler", "heun", "midpoint", "rk4", "tsit5", "dopri5", "dopri8"]

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

    def order(self, terms: Any) -> int:
        """The order of the method.

        Args:
            terms: unused (diffrax's interface).

        Returns:
            4.
        """
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

    Args:
        name: the method (:data:`SolverName`).
        steps: fixed steps, or None for adaptive steps.
        rtol: relative tolerance (adaptive).
        atol: absolute tolerance (adaptive).
        max_steps: step budget; a solve that needs more fails loudly.
        forward_mode: differentiate the solve in forward mode too (``diffrax.DirectAdjoint``).

    Raises:
        ValueError: an unknown method, bad steps or tolerances, or adaptive steps for a method
            without an error estimate.
    """

    name: str = "dopri8"  # a SolverName
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
            raise ValueError(f"solver {self.name!r} has no error estimate: pass steps=<int> for fixed steps")
        for k in ("rtol", "atol"):
            v = getattr(self, k)
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{k} must be a positive finite number, got {v!r}")
        if int(self.max_steps) != self.max_steps or self.max_steps < 1:
            raise ValueError(f"max_steps must be a positive integer, got {self.max_steps!r}")

    @classmethod
    def make(cls, solver: Solver | str | None = None, **kw: Any) -> Solver:
        """Build from a Solver, a name, or None (the default), overriding fields given in ``kw``.

        Args:
            solver: a Solver, a method name, or None.
            **kw: fields to override (None values are ignored).

        Returns:
            The Solver.

        Raises:
            ValueError: ``solver`` is none of these, or a field is invalid.
        """
        kw = {k: v for k, v in kw.items() if v is not None}
        if isinstance(solver, Solver):
            return dataclasses.replace(solver, **kw) if kw else solver
        if solver is None:
            return cls(**kw)
        if isinstance(solver, str):
            return cls(name=solver, **kw)
        raise ValueError(f"solver must be a Solver, a name in {sorted(SOLVERS)} or None, got {solver!r}")

    def tolerances(self, dtype: Any) -> tuple[float, float]:
        """``(rtol, atol)`` with the defaults of ``dtype`` (1e-10 in float64, 1e-6 otherwise).

        Args:
            dtype: the state's dtype.

        Returns:
            The tolerances.
        """
        default = 1e-10 if jnp.dtype(dtype) == jnp.float64 else 1e-6
        return (self.rtol or default, self.atol or default)

    def diffrax_solver(self) -> diffrax.AbstractSolver:
        """The diffrax solver object.

        Returns:
            A new instance of the method.
        """
        return SOLVERS[self.name][0]()

    def controller(self, dtype: Any) -> diffrax.AbstractStepSizeController:
        """The step-size controller: constant for fixed steps, PID with the tolerances otherwise.

        Args:
            dtype: the state's dtype (for the default tolerances).

        Returns:
            The controller.
        """
        if self.steps is not None:
            return diffrax.ConstantStepSize()
        rtol, atol = self.tolerances(dtype)
        return diffrax.PIDController(rtol=rtol, atol=atol)

    def dt0(self, t0: Any, t1: Any) -> Any:
        """The initial step: ``(t1 - t0) / steps`` for fixed steps, None (automatic) otherwise.

        Args:
            t0: start time.
            t1: end time.

        Returns:
            The step or None.
        """
        return None if self.steps is None else (t1 - t0) / self.steps


def check_times(ts: Any, T: float) -> Float[Array, " M"]:
    """Validate save times: a non-empty, strictly increasing 1-d array within [0, T].

    Args:
        ts: the times.
        T: the horizon.

    Returns:
        ``ts`` as a float array.

    Raises:
        ValueError: ts is None, not 1-d, empty, not increasing or outside [0, T].
    """
    if ts is None:
        raise ValueError("ts (the save times) must be given when depth is None")
    ts = jnp.asarray(ts, jnp.result_type(float))
    if ts.ndim != 1 or ts.size < 1:
        raise ValueError(f"ts must be a non-empty 1-d array, got shape {ts.shape}")
    if is_traced(ts, T):
        return ts
    if not bool(jnp.all(jnp.diff(ts) > 0)) or float(ts[0]) < 0 or float(ts[-1]) > T * (1 + 1e-12):
        raise ValueError(f"ts must be strictly increasing within [0, T={T}]")
    return ts


def check_solve(value: Any, ok: Any, solver: Solver, what: str, finite: Any = None) -> Any:
    """Pass ``value`` on, failing loudly if the solve failed or the result is not finite.

    Works eagerly and under jit/vmap (see :func:`ntk_ode._checks.fail_if`).

    Args:
        value: the result (a pytree).
        ok: the solve's success flag (scalar or batch).
        solver: the solver used (named in the message).
        what: what was computed (e.g. ``"apply"``, ``"empirical_ntk"``).
        finite: the arrays whose finiteness is required (default: every leaf of ``value``).

    Returns:
        ``value``.

    Raises:
        RuntimeError: the solve failed (step budget exhausted or step size collapsed).
        FloatingPointError: a non-finite entry (the dynamics blew up).
    """
    value = fail_if(
        value,
        jnp.logical_not(ok),
        f"{what}: the ODE solve failed ({solver.name}, steps={solver.steps}, "
        f"max_steps={solver.max_steps}): the step budget was exhausted or the step size "
        "collapsed. Raise max_steps, loosen rtol/atol, or check for blow-up (e.g. a "
        "quadratic activation at large sigma_w T).",
    )
    leaves = jax.tree_util.tree_leaves(value if finite is None else finite)
    bad = jnp.logical_not(jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in leaves])))
    return fail_if(
        value,
        bad,
        f"{what}: the result is not finite: the dynamics blew up (the hidden state "
        "overflowed). Lower sigma_w T, the input norms, or the depth's step.",
        FloatingPointError,
    )
